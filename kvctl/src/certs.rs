//! `kvctl certs`: a cluster CA and node and client certificates made with rcgen, so that no
//! openssl or cfssl is needed. Files (PEM) go into one directory:
//!
//! - `ca.pem`, `ca-key.pem`: the CA (kept, and reused when the directory already has one);
//! - `<node>.pem`, `<node>-key.pem`: a node's certificate, for both its peer and its client
//!   side, covering the node's name, `localhost`, `127.0.0.1`, `::1` and any extra hosts;
//! - `client-<user>.pem`, `client-<user>-key.pem`: a client certificate whose Common Name is
//!   the user.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::path::{Path, PathBuf};

/// What went wrong, naming the file.
#[derive(Debug)]
pub struct CertsError(pub String);

impl std::fmt::Display for CertsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn write(path: &Path, contents: &str) -> Result<(), CertsError> {
    std::fs::write(path, contents).map_err(|e| CertsError(format!("{}: {e}", path.display())))
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |e| CertsError(format!("{what}: {e}"))
}

/// The CA in `dir`: loaded if `ca.pem` and `ca-key.pem` exist, created otherwise.
pub fn ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    std::fs::create_dir_all(dir).map_err(|e| CertsError(format!("{}: {e}", dir.display())))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() && key_path.exists() {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| CertsError(format!("{}: {e}", p.display())))
        };
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(rcgen_error("ca-key.pem"))?;
        return Issuer::from_ca_cert_pem(&read(&cert_path)?, key).map_err(rcgen_error("ca.pem"));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "kv cluster CA");
    let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
    let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
    write(&cert_path, &cert.pem())?;
    write(&key_path, &key.serialize_pem())?;
    Ok(Issuer::new(params, key))
}

/// Issues `<file>.pem` and `<file>-key.pem` for `common_name`, covering `hosts`.
fn issue(
    dir: &Path,
    ca: &Issuer<'static, KeyPair>,
    file: &str,
    common_name: &str,
    hosts: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<PathBuf, CertsError> {
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(rcgen_error(file))?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = usages;
    let key = KeyPair::generate().map_err(rcgen_error(file))?;
    let cert = params.signed_by(&key, ca).map_err(rcgen_error(file))?;
    let path = dir.join(format!("{file}.pem"));
    write(&path, &cert.pem())?;
    write(&dir.join(format!("{file}-key.pem")), &key.serialize_pem())?;
    Ok(path)
}

/// A node certificate for `name`, valid as server and client (peers dial each other).
pub fn node(
    dir: &Path,
    ca: &Issuer<'static, KeyPair>,
    name: &str,
    extra_hosts: &[String],
) -> Result<PathBuf, CertsError> {
    let mut hosts = vec![name.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(extra_hosts.iter().cloned());
    hosts.dedup();
    let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    issue(dir, ca, name, name, &hosts, usages)
}

/// A client certificate for `user` (its Common Name).
pub fn client(
    dir: &Path,
    ca: &Issuer<'static, KeyPair>,
    user: &str,
) -> Result<PathBuf, CertsError> {
    let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(dir, ca, &format!("client-{user}"), user, &[], usages)
}
