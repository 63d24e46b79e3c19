//! A throwaway certificate authority and server certificate, made with the `openssl` CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files a TLS `redis-server` needs, all inside the server's temporary directory.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
}

/// Generates a CA (P-256, valid one day) and a server certificate for `127.0.0.1` / `localhost`
/// signed by it, into `dir`.
pub(crate) fn generate(dir: &Path) -> TlsFiles {
    let ca_key = dir.join("ca.key");
    let ca_cert = dir.join("ca.crt");
    let server_key = dir.join("server.key");
    let server_csr = dir.join("server.csr");
    let server_cert = dir.join("server.crt");
    let extensions = dir.join("server.ext");

    openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-days",
        "1",
        "-subj",
        "/CN=lock-guard test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        path(&ca_key),
        "-out",
        path(&ca_cert),
    ]);
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        path(&server_key),
        "-out",
        path(&server_csr),
    ]);
    fs::write(
        &extensions,
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write the server certificate's extensions file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&server_csr),
        "-CA",
        path(&ca_cert),
        "-CAkey",
        path(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-sha256",
        "-extfile",
        path(&extensions),
        "-out",
        path(&server_cert),
    ]);

    TlsFiles {
        ca_cert,
        server_cert,
        server_key,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn openssl(args: &[&str]) {
    let output = match Command::new("openssl").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("openssl not found: install it (Debian/Ubuntu: apt-get install openssl)")
        }
        Err(e) => panic!("could not run openssl: {e}"),
    };
    assert!(
        output.status.success(),
        "openssl {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
