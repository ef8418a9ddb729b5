//! Access control by client certificate (docs/security.md).
//!
//! With `--auth-policy-file`, every KV and Cluster call is checked here before it reaches
//! the node: the user is the Common Name of the client's certificate, the policy grants
//! roles to users and permissions to roles, and anything not granted is denied. A denial is
//! PERMISSION_DENIED naming the user and the permission missing, and is logged.
//!
//! The policy is TOML:
//!
//! ```toml
//! [users]
//! root = ["admin", "everything"]
//! app = ["app-data"]
//!
//! [roles.everything]
//! read = [""]         # key prefixes; "" is every key
//! write = [""]
//!
//! [roles.app-data]
//! read = ["app/"]
//! write = ["app/"]
//!
//! [roles.admin]
//! admin = true        # member and leadership operations
//! ```

use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tonic::Status;

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission<'a> {
    /// Reading `key`, or every key under a prefix (List).
    Read(&'a [u8]),
    /// Writing `key`.
    Write(&'a [u8]),
    /// Member and leadership operations.
    Admin,
    /// Seeing the cluster (member list, status): any user the policy names.
    Known,
}

impl std::fmt::Display for Permission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Permission::Read(key) => write!(f, "read on {:?}", String::from_utf8_lossy(key)),
            Permission::Write(key) => write!(f, "write on {:?}", String::from_utf8_lossy(key)),
            Permission::Admin => f.write_str("admin"),
            Permission::Known => f.write_str("any role"),
        }
    }
}

/// A role: key prefixes it may read and write, and whether it may administer the cluster.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Key prefixes readable ("" for every key).
    #[serde(default)]
    pub read: Vec<String>,
    /// Key prefixes writable.
    #[serde(default)]
    pub write: Vec<String>,
    /// Member and leadership operations.
    #[serde(default)]
    pub admin: bool,
}

/// A checked policy: every role a user names exists.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Whether a certificate that may serve TLS (a node's) is accepted as a client identity.
    /// Off by default: a node's certificate is for the peer plane.
    #[serde(default)]
    pub allow_peer_certificates: bool,
    /// Each user's roles.
    #[serde(default)]
    pub users: BTreeMap<String, Vec<String>>,
    /// The roles by name.
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
#[error("--auth-policy-file {path}: {reason}")]
pub struct PolicyError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl Policy {
    /// Reads and checks the policy in `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let error = |reason: String| PolicyError { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Policy::parse(&text).map_err(error)
    }

    /// Parses and checks a policy.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        for (user, roles) in &policy.users {
            if let Some(missing) = roles.iter().find(|role| !policy.roles.contains_key(*role)) {
                return Err(format!("user {user:?} has role {missing:?}, which is not defined"));
            }
        }
        Ok(policy)
    }

    /// Whether `user` may do what `permission` names.
    pub fn allows(&self, user: &str, permission: Permission<'_>) -> bool {
        let Some(names) = self.users.get(user) else { return false };
        let mut roles = names.iter().filter_map(|name| self.roles.get(name));
        let covers = |prefixes: &[String], key: &[u8]| {
            prefixes.iter().any(|prefix| key.starts_with(prefix.as_bytes()))
        };
        match permission {
            Permission::Read(key) => roles.any(|role| covers(&role.read, key)),
            Permission::Write(key) => roles.any(|role| covers(&role.write, key)),
            Permission::Admin => roles.any(|role| role.admin),
            Permission::Known => true,
        }
    }
}

/// The policy in force, replaced whole on reload.
pub struct Authorizer {
    path: PathBuf,
    policy: RwLock<Arc<Policy>>,
    /// What each client certificate seen says, so that it is parsed once, not per request.
    certificates: Mutex<HashMap<Vec<u8>, CertificateFacts>>,
}

/// The certificates remembered at most; past it the memory starts over.
const CERTIFICATES_KEPT_MAX: usize = 1024;

/// What the checks need from a client certificate.
#[derive(Clone)]
struct CertificateFacts {
    /// Its first Common Name, if it has one.
    common_name: Option<Arc<str>>,
    /// Whether it may serve TLS (a node's certificate).
    may_serve_tls: bool,
}

impl Authorizer {
    /// Loads the policy in `path`.
    pub fn load(path: &Path) -> Result<Authorizer, PolicyError> {
        let policy = Policy::load(path)?;
        Ok(Authorizer {
            path: path.to_path_buf(),
            policy: RwLock::new(Arc::new(policy)),
            certificates: Mutex::default(),
        })
    }

    fn current(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Reads the file again: a good policy replaces the one in force; a broken one is
    /// refused, and the one in force stays.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let policy = Policy::load(&self.path)?;
        *self.policy.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(policy);
        Ok(())
    }

    /// Checks that the client of `request` may do what `permission` names.
    pub fn check<T>(
        &self,
        request: &tonic::Request<T>,
        permissions: &[Permission<'_>],
    ) -> Result<(), Status> {
        let policy = self.current();
        let user = self.identity(request, policy.allow_peer_certificates)?;
        let Some(missing) = permissions.iter().find(|&&p| !policy.allows(&user, p)) else {
            return Ok(());
        };
        tracing::warn!(user = &*user, "denied: {missing} is not granted");
        Err(Status::permission_denied(format!(
            "user {user:?} is not granted {missing} (--auth-policy-file)"
        )))
    }
}

impl Authorizer {
    /// The user of `request`: the Common Name of its client certificate.
    fn identity<T>(
        &self,
        request: &tonic::Request<T>,
        allow_peer_certificates: bool,
    ) -> Result<Arc<str>, Status> {
        let denied = |why: &str| {
            tracing::warn!("denied: {why}");
            Status::permission_denied(why.to_string())
        };
        let certs = request.peer_certs().ok_or_else(|| denied("no client certificate"))?;
        let leaf = certs.first().ok_or_else(|| denied("no client certificate"))?;
        let facts = self.facts(leaf);
        if !allow_peer_certificates && facts.may_serve_tls {
            return Err(denied(
                "a node's certificate (it may serve TLS) is not a client identity unless the \
                 policy sets allow_peer_certificates",
            ));
        }
        facts.common_name.ok_or_else(|| denied("the client certificate has no Common Name"))
    }

    /// What `cert` says, parsed on its first use only.
    fn facts(&self, cert: &CertificateDer<'_>) -> CertificateFacts {
        let lock = || self.certificates.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(facts) = lock().get(cert.as_ref()) {
            return facts.clone();
        }
        let facts = CertificateFacts {
            common_name: common_name(cert).map(Arc::from),
            may_serve_tls: raft_net::tls::may_serve_tls(cert),
        };
        let mut certificates = lock();
        if certificates.len() >= CERTIFICATES_KEPT_MAX {
            certificates.clear();
        }
        certificates.insert(cert.to_vec(), facts.clone());
        facts
    }
}

/// The first Common Name of `cert`'s subject.
fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_string)
}

/// Reloads `authorizer` on every SIGHUP, logging the outcome, until the task is aborted.
pub async fn reload_on_hangup(authorizer: Arc<Authorizer>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP: the policy will not be reloaded");
        return;
    };
    while hangups.recv().await.is_some() {
        match authorizer.reload() {
            Ok(()) => tracing::info!("reloaded {}", authorizer.path.display()),
            Err(error) => tracing::error!("{error}; the previous policy stays in force"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[users]
root = ["admin", "everything"]
app = ["app-data"]
auditor = ["reader"]
nobody = []

[roles.everything]
read = [""]
write = [""]

[roles.app-data]
read = ["app/"]
write = ["app/"]

[roles.reader]
read = [""]

[roles.admin]
admin = true
"#;

    /// Every user against every kind of permission: allowed exactly where a role grants it.
    #[test]
    fn the_matrix_of_users_and_permissions() {
        let policy = Policy::parse(POLICY).unwrap();
        let cases: &[(&str, Permission<'_>, bool)] = &[
            ("root", Permission::Read(b"anything"), true),
            ("root", Permission::Write(b"anything"), true),
            ("root", Permission::Admin, true),
            ("app", Permission::Read(b"app/x"), true),
            ("app", Permission::Write(b"app/x"), true),
            ("app", Permission::Read(b"other"), false),
            ("app", Permission::Write(b"ap"), false),
            ("app", Permission::Read(b""), false), // listing every key
            ("app", Permission::Admin, false),
            ("app", Permission::Known, true),
            ("auditor", Permission::Read(b"app/x"), true),
            ("auditor", Permission::Read(b""), true),
            ("auditor", Permission::Write(b"app/x"), false),
            ("auditor", Permission::Admin, false),
            ("nobody", Permission::Read(b"x"), false),
            ("nobody", Permission::Known, true),
            ("stranger", Permission::Read(b"x"), false),
            ("stranger", Permission::Known, false),
        ];
        for &(user, permission, allowed) in cases {
            assert_eq!(policy.allows(user, permission), allowed, "{user} {permission}");
        }
    }

    #[test]
    fn an_empty_policy_denies_everything() {
        let policy = Policy::parse("").unwrap();
        assert!(!policy.allows("root", Permission::Read(b"x")));
        assert!(!policy.allows("root", Permission::Known));
    }

    #[test]
    fn broken_policies_are_refused_naming_what_is_wrong() {
        let undefined = Policy::parse("[users]\nroot = [\"ghost\"]\n").unwrap_err();
        assert!(undefined.contains("\"ghost\", which is not defined"), "{undefined}");
        let unknown = Policy::parse("[roles.r]\nreed = [\"\"]\n").unwrap_err();
        assert!(unknown.contains("reed"), "{unknown}");
        let not_toml = Policy::parse("[users\n").unwrap_err();
        assert!(not_toml.contains("line 1"), "{not_toml}");
    }

    /// The example policy of the repository parses, and is default-deny.
    #[test]
    fn the_example_policy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/auth-policy.toml");
        let policy = Policy::load(&path).unwrap();
        assert!(policy.allows("root", Permission::Admin));
        assert!(!policy.allows("someone-else", Permission::Read(b"x")));
        assert!(!policy.allow_peer_certificates);
    }

    /// A reload takes a good file and keeps the policy in force when the file is broken.
    #[test]
    fn a_broken_file_on_reload_keeps_the_previous_policy() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), POLICY).unwrap();
        let authorizer = Authorizer::load(file.path()).unwrap();
        std::fs::write(file.path(), "[users]\nroot = [\"ghost\"]\n").unwrap();
        assert!(authorizer.reload().is_err());
        assert!(authorizer.current().allows("app", Permission::Write(b"app/1")));
        std::fs::write(file.path(), "[users]\napp = []\n").unwrap();
        authorizer.reload().unwrap();
        assert!(!authorizer.current().allows("app", Permission::Write(b"app/1")));
    }

    /// A certificate signed by a fresh key, named `common_name`, for clients or for nodes.
    fn certificate(common_name: &str, server: bool) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["node.example".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = if server {
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// What a certificate says is remembered per certificate: each one keeps its own name and
    /// kind however often it comes back, and however full the memory got in between.
    #[test]
    fn each_certificate_is_remembered_as_what_it_says() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), POLICY).unwrap();
        let authorizer = Authorizer::load(file.path()).unwrap();
        let app = CertificateDer::from(certificate("app", false));
        let node = CertificateDer::from(certificate("n1", true));
        for round in 0..3 {
            let facts = authorizer.facts(&app);
            assert_eq!(facts.common_name.as_deref(), Some("app"), "round {round}");
            assert!(!facts.may_serve_tls, "round {round}");
            let facts = authorizer.facts(&node);
            assert_eq!(facts.common_name.as_deref(), Some("n1"), "round {round}");
            assert!(facts.may_serve_tls, "round {round}");
        }
        for n in 0..CERTIFICATES_KEPT_MAX {
            authorizer.facts(&CertificateDer::from([&n.to_le_bytes(), app.as_ref()].concat()));
        }
        assert!(authorizer.certificates.lock().unwrap().len() <= CERTIFICATES_KEPT_MAX);
        assert_eq!(authorizer.facts(&app).common_name.as_deref(), Some("app"));
    }
}
