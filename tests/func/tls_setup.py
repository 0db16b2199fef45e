# SPDX-License-Identifier: MIT
"""TLS credentials for the functional tests, made with GnuTLS's own tools
(certtool, psktool from gnutls-bin) in QEMU's directory layout:

    ca-cert.pem                      the CA that signs everything here
    server-cert.pem, server-key.pem  for endpoint=server
    client-cert.pem, client-key.pem  for endpoint=client
    keys.psk                         psktool's "user:hexkey" lines

make_ca() gives a CA; make_x509_dir() a directory for one endpoint signed
by it (optionally expired or not yet valid); make_psk_dir() a PSK file.
"""
import os
import shutil
import subprocess

try:
    from conftest import host_tool      # skips the test when missing
except ImportError:                     # bench/, without pytest
    def host_tool(name):
        path = shutil.which(name)
        if not path:
            raise RuntimeError("%s is not installed (gnutls-bin)" % name)
        return path

SERVER_DN_CN = "localhost"
CLIENT_CN = "lockstep-client"


def _certtool(args, template=None, tmp=None):
    argv = [host_tool("certtool")] + args
    path = None
    if template is not None:
        path = os.path.join(tmp, "template.%d" % os.getpid())
        with open(path, "w") as f:
            f.write(template)
        argv += ["--template", path]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if path:
        os.unlink(path)
    assert r.returncode == 0, r.stderr
    return r


def _key(path):
    _certtool(["--generate-privkey", "--key-type", "rsa", "--bits", "2048",
               "--outfile", path])
    return path


class CA:
    def __init__(self, dirpath, cert, key):
        self.dir = dirpath
        self.cert = cert
        self.key = key


def make_ca(dirpath, cn="Lockstep Test CA"):
    os.makedirs(dirpath, exist_ok=True)
    key = _key(os.path.join(dirpath, "ca-key.pem"))
    cert = os.path.join(dirpath, "ca-cert.pem")
    _certtool(["--generate-self-signed", "--load-privkey", key,
               "--outfile", cert],
              'cn = "%s"\nca\ncert_signing_key\nexpiration_days = 30\n' % cn,
              dirpath)
    return CA(dirpath, cert, key)


def make_x509_dir(dirpath, ca, endpoint, cn=None, validity=None,
                  trust=None):
    """A tls-creds-x509 dir for endpoint ("server" or "client") signed by
    ca.  validity: None, "expired" or "future".  trust: the CA whose
    certificate goes in ca-cert.pem (default: ca)."""
    os.makedirs(dirpath, exist_ok=True)
    with open((trust or ca).cert) as src, \
            open(os.path.join(dirpath, "ca-cert.pem"), "w") as dst:
        dst.write(src.read())
    key = _key(os.path.join(dirpath, endpoint + "-key.pem"))
    cert = os.path.join(dirpath, endpoint + "-cert.pem")
    if cn is None:
        cn = SERVER_DN_CN if endpoint == "server" else CLIENT_CN
    t = 'organization = "Lockstep Tests"\ncn = "%s"\n' % cn
    if endpoint == "server":
        t += ('dns_name = "localhost"\nip_address = "127.0.0.1"\n'
              "tls_www_server\n")
    else:
        t += "tls_www_client\n"
    t += "encryption_key\nsigning_key\n"
    if validity == "expired":
        t += ('activation_date = "2020-01-01 00:00:00 UTC"\n'
              'expiration_date = "2021-01-01 00:00:00 UTC"\n')
    elif validity == "future":
        t += ('activation_date = "2099-01-01 00:00:00 UTC"\n'
              'expiration_date = "2100-01-01 00:00:00 UTC"\n')
    else:
        t += "expiration_days = 30\n"
    _certtool(["--generate-certificate", "--load-privkey", key,
               "--load-ca-certificate", ca.cert,
               "--load-ca-privkey", ca.key, "--outfile", cert], t, dirpath)
    return dirpath


def client_dn(dirpath, endpoint="client"):
    """The distinguished name of a directory's certificate as QEMU and
    lockstepd match it (gnutls_x509_crt_get_dn(): the attributes in the
    certificate's order, "O=...,CN=..."); certtool prints RFC 4514's
    reverse order, so it is turned around (no escaped commas here)."""
    r = _certtool(["--certificate-info", "--infile",
                   os.path.join(dirpath, endpoint + "-cert.pem")])
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("Subject:"):
            rdns = line[len("Subject:"):].strip().split(",")
            return ",".join(reversed(rdns))
    raise AssertionError("no Subject in certtool output")


def make_psk_dir(dirpath, users=("alice",)):
    """keys.psk with a random key per user (psktool)."""
    os.makedirs(dirpath, exist_ok=True)
    path = os.path.join(dirpath, "keys.psk")
    for u in users:
        r = subprocess.run([host_tool("psktool"), "-u", u, "-p", path],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    return dirpath


def psk_key(dirpath, user):
    with open(os.path.join(dirpath, "keys.psk")) as f:
        for line in f:
            name, _, key = line.strip().partition(":")
            if name == user:
                return key
    raise KeyError(user)
