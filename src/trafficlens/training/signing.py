"""Signed bundles: Ed25519 over the SHA-256 of every file of a run directory.

The sha256 of the weights in `config.json` only detects accidents: whoever can change the
weights can change the hash beside them. A signature made with a private key that only the
model's publisher holds cannot be forged, so a deployment that trusts that publisher's public
key (`predict/serve/live --trusted-key PUB`) refuses any bundle it did not sign, or any file
changed after signing.

    trafficlens keygen -o keys/lab             # keys/lab.key (private, 0600) and keys/lab.pub
    trafficlens sign runs/cnn --key keys/lab.key     # writes runs/cnn/signature.json
    trafficlens predict runs/cnn x.pcap --trusted-key keys/lab.pub

`signature.json` holds `files` {name: sha256} (every regular file at the top of the run
directory but itself, so config.json, the model file, metrics, history and split), the signing
key's fingerprint and the signature over the canonical JSON of the two. Verifying re-hashes
the listed files: a listed file changed or gone, or a bundle file that loading reads but the
signature does not list, is refused. Files added later (an `evaluation/` folder) are outside
the signature and never read by loading.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from trafficlens.errors import BundleError, ConfigError
from trafficlens.files import sha256_file

SIGNATURE = "signature.json"
FORMAT = "trafficlens-signature"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography comes with the ml extra
        raise ConfigError("signing needs the cryptography package: pip install cryptography") from None
    return serialization, ed25519


def fingerprint(public_bytes: bytes) -> str:
    """SHA-256 of the raw 32-byte public key, hex: how a signature names its key."""
    return hashlib.sha256(public_bytes).hexdigest()


def generate_keys(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SubjectPublicKeyInfo PEM)."""
    serialization, ed25519 = _crypto()
    prefix = Path(prefix)
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"{path} exists; keys are never overwritten (choose another -o)")
    key = ed25519.Ed25519PrivateKey.generate()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _load_key(path: str | os.PathLike, private: bool):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key ({exc.strerror or exc})") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM {'private' if private else 'public'} key ({exc})") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise ConfigError(f"{path}: not an Ed25519 key (make one with `trafficlens keygen`)")
    return key


def _raw_public(public_key) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _message(files: dict[str, str], key_id: str) -> bytes:
    return json.dumps({"format": FORMAT, "files": files, "key": key_id}, sort_keys=True, separators=(",", ":")).encode()


def _bundle_files(run: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(run.iterdir()) if p.is_file() and p.name != SIGNATURE}


def sign_bundle(run: str | os.PathLike, key_path: str | os.PathLike) -> Path:
    """Sign every file of run directory `run` with the Ed25519 private key at `key_path`."""
    from trafficlens.training.bundle import read_config

    run = Path(run)
    read_config(run)  # only bundles are signed
    key = _load_key(key_path, private=True)
    files = _bundle_files(run)
    key_id = fingerprint(_raw_public(key.public_key()))
    signature = key.sign(_message(files, key_id))
    out = run / SIGNATURE
    from trafficlens.files import atomic_write_text

    atomic_write_text(out, json.dumps({"format": FORMAT, "files": files, "key": key_id,
                                       "signature": base64.b64encode(signature).decode()}, indent=2) + "\n")
    return out


def verify_bundle(run: str | os.PathLike, trusted: Iterable[str | os.PathLike], needed: Iterable[str]) -> dict[str, Any]:
    """Check `run`'s signature against the trusted public keys; `needed` names the files that
    loading will read (each must be signed). Returns the verified record; BundleError otherwise."""
    from cryptography.exceptions import InvalidSignature

    run = Path(run)
    keys = {}
    for path in trusted:
        public = _load_key(path, private=False)
        keys[fingerprint(_raw_public(public))] = public
    if not keys:
        raise ConfigError("--trusted-key names no key")
    path = run / SIGNATURE
    if not path.is_file():
        raise BundleError(f"{run}: not signed (no {SIGNATURE}); sign it with `trafficlens sign {run} --key KEY`")
    try:
        record = json.loads(path.read_text())
        files, key_id, signature = record["files"], record["key"], base64.b64decode(record["signature"], validate=True)
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TypeError("files")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable signature ({exc.__class__.__name__})") from None
    if key_id not in keys:
        raise BundleError(f"{run}: signed by key {key_id[:16]}..., which is not among the trusted keys")
    try:
        keys[key_id].verify(signature, _message(files, key_id))
    except InvalidSignature:
        raise BundleError(f"{run}: the signature does not verify (signature.json was altered)") from None
    for name in needed:
        if name not in files:
            raise BundleError(f"{run}: {name} is not covered by the signature")
    for name, digest in files.items():
        target = run / name
        if os.sep in name or name.startswith(".") or not target.is_file():
            raise BundleError(f"{run}: signed file {name} is missing")
        if sha256_file(target) != digest:
            raise BundleError(f"{run}: {name} changed after signing")
    return record
