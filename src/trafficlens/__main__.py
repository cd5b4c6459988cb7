from trafficlens.cli import main

main()
