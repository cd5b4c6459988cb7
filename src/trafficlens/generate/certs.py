"""A throwaway CA and one server certificate for the whole host pool, made at run time.

No key is ever committed: each run makes its own with trustme (backed by `cryptography`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Certificates:
    cafile: str
    certfile: str  # server certificate chain (leaf first)
    keyfile: str


def make(workdir: str, hosts: tuple[str, ...]) -> Certificates:
    import trustme

    ca = trustme.CA(organization_name="trafficlens lab CA")
    cert = ca.issue_cert(*hosts)
    paths = Certificates(os.path.join(workdir, "ca.pem"), os.path.join(workdir, "server.pem"),
                         os.path.join(workdir, "server.key"))
    ca.cert_pem.write_to_path(paths.cafile)
    with open(paths.certfile, "wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    cert.private_key_pem.write_to_path(paths.keyfile)
    os.chmod(paths.keyfile, 0o600)
    return paths
