"""BitTorrent with forced encryption: libtorrent as a seeder (servers) and as a leecher (client).

The seeder holds a few torrents of random data made at start (a few hundred KB each, written
to the run's workdir, where the leecher reads the .torrent as a user who downloaded it). Each
session is its own libtorrent session bound to the session's address: it adds the seeder as a
peer directly (no trackers, DHT, LSD, UPnP or NAT-PMP: nothing outside is reachable), and
downloads the whole torrent over TCP with message stream encryption forced (RC4 on the whole
stream), so handshakes and payload are obfuscated as clients that force encryption do.
"""

from __future__ import annotations

import asyncio
import glob
import os
import random
import shutil
import tempfile
import time

from trafficlens.generate.apps import ClientContext, ServerContext

TORRENTS = 6


def _settings(listen: str) -> dict:
    import libtorrent as lt

    return {
        "listen_interfaces": listen,
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,  # TCP peers only
        "out_enc_policy": int(lt.enc_policy.pe_forced), "in_enc_policy": int(lt.enc_policy.pe_forced),
        "allowed_enc_level": int(lt.enc_level.rc4), "prefer_rc4": True,
        "active_downloads": -1, "active_seeds": -1, "active_limit": -1,  # no queueing of our torrents
        "alert_mask": int(lt.alert_category.error),
    }


def _make_torrents(folder: str, rng: random.Random) -> list[str]:
    import libtorrent as lt

    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)
    paths = []
    for i in range(TORRENTS):
        name = f"{rng.choice(['backup', 'dataset', 'release', 'footage', 'logs', 'maps'])}-{i}.bin"
        with open(os.path.join(data, name), "wb") as fh:
            fh.write(os.urandom(rng.randint(200_000, 800_000)))
        fs = lt.file_storage()
        lt.add_files(fs, os.path.join(data, name))
        t = lt.create_torrent(fs, 16384 * rng.choice([1, 2]))
        lt.set_piece_hashes(t, data)
        path = os.path.join(folder, f"{i}.torrent")
        with open(path, "wb") as fh:
            fh.write(lt.bencode(t.generate()))
        paths.append(path)
    return paths


async def serve(ctx: ServerContext) -> None:
    import libtorrent as lt

    folder = os.path.join(ctx.workdir, "p2p")
    os.makedirs(folder, exist_ok=True)
    paths = await asyncio.to_thread(_make_torrents, folder, random.Random())
    listen = ",".join(f"{ip}:{port}" for ip in ctx.addresses for port in ctx.ports)
    ses = lt.session(_settings(listen))
    for path in paths:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(path)
        atp.save_path = os.path.join(folder, "data")
        atp.flags = (atp.flags | lt.torrent_flags.seed_mode) & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        ses.add_torrent(atp)
    ctx.cleanup.append(ses.pause)  # also keeps the session alive while the agent serves


def _download(session: dict, workdir: str) -> None:
    import libtorrent as lt

    rng = random.Random(session["seed"])
    torrents = sorted(glob.glob(os.path.join(workdir, "p2p", "*.torrent")))
    if not torrents:
        raise RuntimeError("the seeder has published no torrents")
    save = tempfile.mkdtemp(prefix="p2p-", dir=workdir)
    ses = lt.session(_settings(f"{session['client_ip']}:0") | {"outgoing_interfaces": session["client_ip"]})
    try:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(rng.choice(torrents))
        atp.save_path = save
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)  # start now, not when queued
        handle = ses.add_torrent(atp)
        handle.connect_peer((session["server_ip"], session["port"]))
        deadline = time.monotonic() + 60
        while not handle.status().is_seeding:
            if time.monotonic() > deadline:
                st = handle.status()
                raise TimeoutError(f"p2p: {st.progress:.0%} after 60 s, {st.num_peers} peers")
            time.sleep(0.1)
        time.sleep(rng.uniform(0.1, 0.5))  # a leecher lingers a moment before it leaves
        ses.remove_torrent(handle)
    finally:
        ses.pause()  # disconnects its peers; the rest goes with the session
        del ses
        shutil.rmtree(save, ignore_errors=True)


async def run(session: dict, ctx: ClientContext) -> None:
    await asyncio.to_thread(_download, session, ctx.workdir)
