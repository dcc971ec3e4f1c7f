"""Signed release bundles: OpenSSF model signing, in its own format and with its own tool.

`package --sign-key` writes ``provenance.json`` (an in-toto statement: what built the artifact) into each
artifact folder and then signs the folder with model-signing (a Sigstore bundle, ``model.sig``: a DSSE envelope
over an in-toto statement of every file's sha256, provenance and manifest included), so the signature travels
beside the artifact and inside its archive. `verify --public-key` and ``ArtifactEncoder(public_key=...)`` check
it before anything else is read: a file added, removed or changed (the manifest's checksums rewritten or not),
another key or no signature is one line, and a third party checks the same bundle with
``model_signing verify key`` unchanged.

model-signing runs from its own venv (.venv-signing, made on first use, about half a minute): its sigstore
needs typing_extensions >= 4.14 and pydantic >= 2.12, while the LiteRT converter (xdsl 0.28) pins
typing_extensions < 4.13 in the toolchain's venv. An app's deploy environment has no such conflict.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.errors import ArtifactError, ConfigError, OutputError
from core.manifest import PROVENANCE, SIGNATURE, Artifact, artifact_files, sha256_file, write_json_atomic
from core.schema import encode

ROOT = Path(__file__).resolve().parent.parent
SIGNING_VENV = ROOT / ".venv-signing"
# model-signing 1.1.1 imports pyOpenSSL without declaring it; the rest is what it resolved to on 2026-12-07.
REQUIREMENTS = ("model-signing==1.1.1", "pyopenssl==26.4.0", "sigstore==4.5.1", "cryptography==50.0.2",
                "pydantic==2.14.4", "typing_extensions==4.16.0")
TOOL_TIMEOUT_S = 300
STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/embedding-toolchain/export/v1"


def signing_python(log=print) -> Path:
    """The signing venv's Python, the venv made on first use."""
    python = SIGNING_VENV / "bin" / "python"
    stamp = SIGNING_VENV / ".installed"
    if python.exists() and stamp.is_file() and stamp.read_text() == "\n".join(REQUIREMENTS):
        return python
    log(f"installing model-signing into {SIGNING_VENV} (once; about half a minute)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(SIGNING_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True, capture_output=True,
                       timeout=TOOL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise OutputError(f"could not install model-signing into {SIGNING_VENV} ({type(exc).__name__}); it needs "
                          "PyPI once: check the network, then re-run") from None
    stamp.write_text("\n".join(REQUIREMENTS))
    return python


def _model_signing(*args: str) -> subprocess.CompletedProcess:
    """model-signing's own command line (`model_signing sign|verify key ...`) from the signing venv."""
    tool = signing_python().parent / "model_signing"
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {result.returncode}")[:300]


def generate_key(folder: Path) -> tuple[Path, Path]:
    """A new ECDSA P-256 key pair, PEM (private key without a password, for demos and tests): (private, public)."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "signing-key.pem", folder / "signing-key.pub.pem"
    script = (
        "import sys\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "key = ec.generate_private_key(ec.SECP256R1())\n"
        "open(sys.argv[1], 'wb').write(key.private_bytes(serialization.Encoding.PEM, "
        "serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))\n"
        "open(sys.argv[2], 'wb').write(key.public_key().public_bytes(serialization.Encoding.PEM, "
        "serialization.PublicFormat.SubjectPublicKeyInfo))\n"
    )
    subprocess.run([str(signing_python()), "-c", script, str(private), str(public)], check=True)
    os.chmod(private, 0o600)
    return private, public


def provenance_statement(artifact: Artifact) -> dict:
    """What built the artifact, as an in-toto statement with an SLSA v1 provenance predicate: its files (subjects),
    the build config, library versions, the source model's checksum, and the gate's verdict and parity."""
    manifest = artifact.manifest
    subjects = [{"name": path.relative_to(artifact.folder).as_posix(), "digest": {"sha256": sha256_file(path)}}
                for path in artifact_files(artifact.folder)]
    return {
        "_type": STATEMENT,
        "subject": subjects,
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"build": encode(manifest.build), "target": manifest.target,
                                       "artifact": manifest.artifact},
                "internalParameters": {"versions": manifest.versions},
                "resolvedDependencies": [{"uri": f"model:{manifest.model.source}",
                                          "name": manifest.model.name,
                                          "digest": {"sha256": manifest.model.sha256}}],
            },
            "runDetails": {
                "builder": {"id": "embedding-toolchain: cli.py export"},
                "metadata": {"finishedOn": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                         time.gmtime(manifest.created_unix))},
                "byproducts": [{"name": "verification", "annotations": {
                    "verdict": manifest.verdict, "gate": encode(manifest.gate), "parity": encode(manifest.parity)}}],
            },
        },
    }


def sign(artifact: Artifact, private_key: Path) -> Path:
    """Write provenance.json, then model-signing's signature of the whole folder; returns the signature file."""
    if not Path(private_key).is_file():
        raise ConfigError(f"signing key {str(private_key)!r} is not a file; pass a PEM private key to --sign-key")
    folder = artifact.folder
    write_json_atomic(folder / PROVENANCE, provenance_statement(artifact))
    (folder / SIGNATURE).unlink(missing_ok=True)
    result = _model_signing("sign", "key", str(folder), "--private_key", str(private_key),
                            "--signature", str(folder / SIGNATURE))
    if result.returncode != 0:
        raise ConfigError(f"model-signing could not sign {folder} with {private_key}: {_last_line(result)}")
    return folder / SIGNATURE


def check_signature(artifact_dir: Path, public_key: Path) -> None:
    """Refuse, in one line, an artifact that is unsigned, signed by another key, or whose files differ in any way
    from what was signed. Runs before anything in the folder is parsed."""
    if not Path(public_key).is_file():
        raise ConfigError(f"public key {str(public_key)!r} is not a file; pass the signer's PEM public key")
    if not (artifact_dir / SIGNATURE).is_file():
        raise ArtifactError(f"{artifact_dir} is not signed (no {SIGNATURE}); package it with --sign-key, or verify "
                            "without --public-key")
    result = _model_signing("verify", "key", str(artifact_dir), "--signature", str(artifact_dir / SIGNATURE),
                            "--public_key", str(public_key))
    if result.returncode != 0 or "Verification succeeded" not in result.stdout + result.stderr:
        reason = _last_line(result)
        why = ("its files differ from the signed ones" if "mismatch" in reason.lower() or "unsigned" in reason.lower()
               else "the signature does not match this public key or is damaged")
        raise ArtifactError(f"{artifact_dir}: signature check failed, {why} (model-signing: {reason[:160]})")

