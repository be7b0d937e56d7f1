"""Issue 25 §4: "unreachable (no connection within 30 s)" hid the cause. Each case here is a real
endpoint on loopback (tfkd's server with and without TLS, its REST port, a closed port, another
CA's certificate); the error names what is wrong."""

import subprocess

import pytest

from tfkd import serving
from tfkd import teacher

from test_faults import free_port


def _certificate(directory, name):
    key, cert = directory / f"{name}-key.pem", directory / f"{name}-cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def _cause(target, **fields):
    with pytest.raises(teacher.TeacherError, match="unreachable") as e:
        teacher.connect(target, "teacher", connect_timeout_s=2, **fields)
    return str(e.value)


def test_the_cause_of_an_unreachable_teacher_is_named(teacher_base, tmp_path):
    key, cert = _certificate(tmp_path, "server")
    _, other_ca = _certificate(tmp_path, "other")
    assert "connection refused: nothing listens on that port" in _cause(f"127.0.0.1:{free_port()}")
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             rest_api_port=0) as plain:
        assert "answers HTTP/1.x, not gRPC: a REST port?" in _cause(
            f"127.0.0.1:{plain.rest_api_port}")
        assert "the server answers in plaintext" in _cause(plain.target, tls_ca_file=str(cert))
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             ssl_server_cert=cert.read_bytes(),
                             ssl_server_key=key.read_bytes()) as secure:
        assert "the server speaks TLS: give its CA" in _cause(secure.target)
        assert "not trusted by tls_ca_file=" in _cause(secure.target, tls_ca_file=str(other_ca))


def test_a_ca_file_that_is_not_pem_is_refused_before_connecting(tmp_path):
    garbage = tmp_path / "ca.crt"
    garbage.write_bytes(b"\x30\x82\x01\x0a binary DER, not PEM")
    with pytest.raises(ValueError, match=r"tls_ca_file='.*ca.crt': not a PEM file"):
        teacher.connect("127.0.0.1:1", "teacher", tls_ca_file=str(garbage))


def test_the_kubeflow_teacher_check_reaches_a_tls_teacher_with_a_token(teacher_base, tmp_path):
    """Issue 25 §4: the Kubeflow pipeline's first step checked the teacher over a plaintext channel
    without the token, so a teacher behind TLS and an auth check could not be used at all. It now
    uses the channel the distil step uses (the TLS and token settings of ``settings``)."""
    from tfkd import kubeflow

    from conftest import RequireToken

    key, cert = _certificate(tmp_path, "server")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             ssl_server_cert=cert.read_bytes(), ssl_server_key=key.read_bytes(),
                             interceptors=[RequireToken("s3cret")]) as srv:
        found = kubeflow.check_teacher(srv.target, "teacher", tls_ca_file=str(cert),
                                       auth_token_file=str(token))
        assert found["signatures"] == ["serving_default"] and found["version"] == 1
        with pytest.raises(RuntimeError, match="UNAUTHENTICATED"):
            kubeflow.check_teacher(srv.target, "teacher", tls_ca_file=str(cert))
        with pytest.raises(RuntimeError, match="the server speaks TLS"):
            kubeflow.check_teacher(srv.target, "teacher", timeout_s=2)
