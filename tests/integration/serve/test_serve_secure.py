"""``scoring serve`` with TLS and a bearer token: only HTTPS and gRPC over TLS, only with it.

One server for the module, started with ``--tls-cert``/``--tls-key`` (a server certificate
for 127.0.0.1 signed by a CA made here) and ``SCORING_SERVE_TOKEN``; called by curl and by
KServe's gRPC client trusting that CA. The health endpoints stay open: they are what a load
balancer's and Kubernetes' probes call, which hold no token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import scoring
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kserve import InferenceGRPCClient
from scoring.dev.demo.data import KEY, generate_day
from scoring.lifecycle.loading import load_artifact
from scoring.model.contract import Contract

from tests.integration.conftest import START
from tests.integration.serve import serve_process
from tests.integration.serve.serve_process import ServeProcess, v2_binary, v2_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BEARER = "Bearer {}"


@dataclass(frozen=True)
class Tls:
    ca: Path  # what clients trust
    cert: Path  # the server's certificate, for 127.0.0.1
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, Any] | None = None
) -> x509.Certificate:
    """A CA's certificate (no ``issuer``), or a server's for 127.0.0.1 signed by ``issuer``."""
    now = dt.datetime.now(dt.UTC)
    signer_name, signer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(signer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            False,
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    return builder.sign(signer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a server certificate for 127.0.0.1 (an IP SAN) it signed, as PEM files."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("scoring test CA", ca_key)
    server = _certificate("127.0.0.1", server_key, issuer=("scoring test CA", ca_key))
    made = Tls(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    made.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    made.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    made.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    made.key.chmod(0o600)
    return made


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def server(
    artifact_dir: Path, tls: Tls, token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("serve-secure")
    # `scoring -v serve`: the log at INFO, so that there is more in it the token could be in.
    verbose = folder / "scoring-verbose"
    verbose.write_text(f'#!/bin/sh\nexec "{serve_process.SCORING}" -v "$@"\n')
    verbose.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_process, "SCORING", str(verbose))
        process = ServeProcess(
            artifact_dir,
            folder,
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
            env={"SCORING_SERVE_TOKEN": token},
        )  # fmt: skip
    assert process.url.startswith("https://")
    try:
        process.wait_ready(verify=ssl.create_default_context(cafile=str(tls.ca)))
        yield process
        assert process.terminate() == 0, process.log()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def rows(contract: Contract) -> pa.Table:
    """Demo rows whose text features all hold a value: a binary BYTES tensor has no null."""
    table = generate_day(START, 60, seed=41)
    keep = pa.array([True] * table.num_rows)
    for feature in contract.features:
        if feature.type == "string":
            keep = pc.and_(keep, pc.is_valid(table.column(feature.name)))
    return table.filter(keep)


@pytest.fixture(scope="module")
def contract(artifact_dir: Path) -> Contract:
    return load_artifact(str(artifact_dir)).contract


@pytest.fixture(scope="module")
def expected(artifact_dir: Path, rows: pa.Table, contract: Contract) -> dict[str, Any]:
    """Each row's score (None where refused) by the library, as the batch job scores."""
    scored = scoring.load_model(str(artifact_dir)).score_batch(rows.select(contract.feature_names))
    return dict(zip(rows.column(KEY).to_pylist(), scored.score.to_pylist(), strict=True))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: str  # as received, one per line
    body: str


def curl(url: str, *options: str, body: dict[str, Any] | None = None) -> Answer:
    """One request with curl; status 0 when curl got no HTTP answer (its error in ``body``)."""
    program = shutil.which("curl")
    assert program, "curl is needed"
    command = [program, "-sS", "-D", "-", "-w", "\n%{http_code}", "--max-time", "20", *options]
    if body is not None:
        command += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    done = subprocess.run(
        [*command, url],
        input=json.dumps(body).encode() if body is not None else None,
        capture_output=True,
        timeout=30,
        check=False,
    )
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        return Answer(0, "", f"curl exit {done.returncode}: {done.stderr.decode()}{out}")
    text, _, status = out.rpartition("\n")
    headers, _, body_text = text.partition("\r\n\r\n")
    return Answer(int(status), headers, body_text)


def _scores(body: str) -> list[float | None]:
    outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    return outputs["score"]


def test_rest_answers_over_https_only_with_the_token(
    server: ServeProcess,
    tls: Tls,
    token: str,
    rows: pa.Table,
    contract: Contract,
    expected: dict[str, Any],
) -> None:
    infer = f"{server.url}/v2/models/model/infer"
    trusted = ("--cacert", str(tls.ca))
    request = v2_json(rows, contract)

    ok = curl(infer, *trusted, "-H", f"Authorization: {BEARER.format(token)}", body=request)
    assert ok.status == 200, ok
    assert _scores(ok.body) == [expected[k] for k in rows.column(KEY).to_pylist()]

    wrong = [
        [],
        ["-H", f"Authorization: {BEARER.format(token[:-1])}"],
        ["-H", f"Authorization: Basic {token}"],
        ["-H", "Authorization: Bearer"],
    ]
    for headers in wrong:
        refused = curl(infer, *trusted, *headers, body=request)
        assert refused.status == 401, (headers, refused)
        assert "www-authenticate: bearer" in refused.headers.lower(), refused
        assert "bearer token is required" in refused.body
    # Everything else is guarded too: the metadata, the v1 route, the metrics.
    for path in ("/v2/models/model", "/v2/models/model/ready", "/metrics", "/v2"):
        assert curl(f"{server.url}{path}", *trusted).status == 401, path
    v1 = curl(f"{server.url}/v1/models/model:predict", *trusted, body={"instances": []})
    assert v1.status == 401

    # The probes hold no token.
    for path in ("/v2/health/live", "/v2/health/ready"):
        probe = curl(f"{server.url}{path}", *trusted)
        assert probe.status == 200, (path, probe)

    # TLS only: plain HTTP gets no answer, and the certificate is checked against the CA.
    plain = f"http://127.0.0.1:{server.http_port}/v2/health/live"
    with pytest.raises(httpx.TransportError):
        httpx.get(plain, timeout=10)
    assert curl(plain).status == 0
    untrusted = curl(f"{server.url}/v2/health/live")
    assert untrusted.status == 0 and "exit 60" in untrusted.body, untrusted  # not verified


async def _grpc(server: ServeProcess, tls: Tls, call: Any, secure: bool = True) -> Any:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    client = (
        InferenceGRPCClient(server.grpc, use_ssl=True, creds=credentials, timeout=20, retries=0)
        if secure
        else InferenceGRPCClient(server.grpc, timeout=5, retries=0)
    )
    try:
        return await call(client)
    finally:
        await client.close()


def _code(server: ServeProcess, tls: Tls, call: Any, secure: bool = True) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(_grpc(server, tls, call, secure))
    return caught.value.code()


def test_grpc_answers_over_tls_only_with_the_token(
    server: ServeProcess,
    tls: Tls,
    token: str,
    rows: pa.Table,
    contract: Contract,
    expected: dict[str, Any],
) -> None:
    request = v2_binary(rows, contract, "model")
    authorized = [("authorization", BEARER.format(token))]

    answer = asyncio.run(_grpc(server, tls, lambda c: c.infer(request, headers=authorized)))
    scores = {o.name: o.as_numpy() for o in answer.outputs}["score"].tolist()
    want = [expected[k] for k in rows.column(KEY).to_pylist()]
    assert len(scores) == len(want) and None not in want, "rows the library scores"
    assert scores == want  # the same float64s

    for headers in ([], [("authorization", BEARER.format("x" + token))]):
        code = _code(server, tls, lambda c, h=headers: c.infer(request, headers=h))
        assert code == grpc.StatusCode.UNAUTHENTICATED, headers
    assert _code(server, tls, lambda c: c.is_model_ready("model")) == (
        grpc.StatusCode.UNAUTHENTICATED
    )

    # The probes hold no token.
    assert asyncio.run(_grpc(server, tls, lambda c: c.is_server_live())) is True
    assert asyncio.run(_grpc(server, tls, lambda c: c.is_server_ready())) is True

    # TLS only: a plaintext channel to the TLS port never gets through.
    insecure = _code(server, tls, lambda c: c.is_server_live(), secure=False)
    assert insecure == grpc.StatusCode.UNAVAILABLE


def test_the_token_is_never_logged_nor_answered(
    server: ServeProcess, tls: Tls, token: str, rows: pa.Table, contract: Contract
) -> None:
    """Every kind of answer, to the token sent right, sent wrong, and sent to a probe."""
    trusted = ("--cacert", str(tls.ca))
    authorized = ("-H", f"Authorization: {BEARER.format(token)}")
    infer = f"{server.url}/v2/models/model/infer"
    good = v2_json(rows.slice(0, 3), contract)
    bad = {"inputs": good["inputs"][1:]}
    answers = [
        curl(infer, *trusted, *authorized, body=good),
        curl(infer, *trusted, *authorized, body=bad),
        curl(infer, *trusted, "-H", f"Authorization: Bearer {token}x", body=good),
        curl(f"{server.url}/v2/models/nope/infer", *trusted, *authorized, body=good),
        curl(f"{server.url}/v1/models/model:predict", *trusted, *authorized, body=good),
        curl(f"{server.url}/v2/models/model", *trusted, *authorized),
        curl(f"{server.url}/v2/health/ready", *trusted, *authorized),
        curl(f"{server.url}/metrics", *trusted, *authorized),
    ]
    statuses = [a.status for a in answers]
    assert statuses == [200, 400, 401, 404, 400, 200, 200, 200], answers
    for answer in answers:
        assert token not in answer.headers + answer.body, answer.status

    async def over_grpc(client: InferenceGRPCClient) -> list[str]:
        seen = []
        request = v2_binary(rows.slice(0, 3), contract, "model")
        for headers in ([("authorization", BEARER.format(token))], [("authorization", token)]):
            try:
                seen.append(str(await client.infer(request, headers=headers)))
            except grpc.aio.AioRpcError as exc:
                seen.append(f"{exc.details()} {exc.trailing_metadata()} {exc.debug_error_string()}")
        return seen

    grpc_seen = asyncio.run(_grpc(server, tls, over_grpc))
    assert "UNAUTHENTICATED" not in grpc_seen[0] and "bearer token is required" in grpc_seen[1]
    assert all(token not in text for text in grpc_seen)

    log = server.log()
    assert '"POST /v2/models/model/infer HTTP/1.1" 401' in log  # at INFO: every request
    assert token not in log
