//! Certificates and keys load from PEM files; every problem names the file.

mod common;

use common::*;
use raft_net::{TlsError, TlsIdentity};

fn load_error(paths: &raft_net::TlsPaths) -> String {
    let error = TlsIdentity::load(paths).unwrap_err();
    error.to_string()
}

#[test]
fn good_files_load() {
    let pki = Pki::new("cluster");
    TlsIdentity::load(&pki.node(1)).unwrap();
}

#[test]
fn a_missing_file_is_named() {
    let pki = Pki::new("cluster");
    for which in ["ca", "cert", "key"] {
        let mut paths = pki.node(1);
        let missing = pki.dir.path().join(format!("no-{which}.pem"));
        match which {
            "ca" => paths.ca = missing.clone(),
            "cert" => paths.cert = missing.clone(),
            _ => paths.key = missing.clone(),
        }
        let error = load_error(&paths);
        assert!(error.contains(&missing.display().to_string()), "{which}: {error}");
        assert!(error.contains("cannot read"), "{which}: {error}");
    }
}

#[test]
fn a_file_without_pem_content_is_named() {
    let pki = Pki::new("cluster");
    let mut paths = pki.node(1);
    std::fs::write(&paths.cert, "not a certificate\n").unwrap();
    let error = TlsIdentity::load(&paths).unwrap_err();
    assert!(matches!(error, TlsError::Empty { .. }), "{error}");
    assert!(error.to_string().contains(&paths.cert.display().to_string()));
    paths = pki.node(2);
    std::fs::write(&paths.key, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .unwrap();
    let error = load_error(&paths);
    assert!(error.contains(&paths.key.display().to_string()), "{error}");
}

#[test]
fn an_expired_certificate_is_named_with_its_dates() {
    let pki = Pki::new("cluster");
    let mut params = rcgen::CertificateParams::new(vec!["node-1.example".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let paths = pki.issue_with("expired", params);
    let error = TlsIdentity::load(&paths).unwrap_err();
    assert!(matches!(error, TlsError::Expired { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("expired.pem") && text.contains("2020"), "{text}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_named() {
    let pki = Pki::new("cluster");
    let mut paths = pki.node(1);
    paths.key = pki.node(2).key;
    let error = TlsIdentity::load(&paths).unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains(&paths.key.display().to_string()), "{text}");
    assert!(text.contains(&paths.cert.display().to_string()), "{text}");
}

/// The client API's listener is checked as a peer identity is: good files load (with or
/// without a client CA), a key that is not the certificate's is named, and HTTP/2 is offered.
#[test]
fn a_client_listener_checks_its_files_as_a_peer_identity_does() {
    use raft_net::tls::client_listener_config;
    let pki = Pki::new("cluster");
    let paths = pki.node(1);
    let with_ca = client_listener_config(&paths.cert, &paths.key, Some(&paths.ca), &[b"h2"]);
    assert_eq!(with_ca.unwrap().alpn_protocols, [b"h2".to_vec()]);
    client_listener_config(&paths.cert, &paths.key, None, &[b"h2"]).unwrap();

    let wrong_key = pki.node(2).key;
    let error = client_listener_config(&paths.cert, &wrong_key, None, &[]).unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(error.to_string().contains(&wrong_key.display().to_string()), "{error}");
    let missing_ca = pki.dir.path().join("no-ca.pem");
    let error =
        client_listener_config(&paths.cert, &paths.key, Some(&missing_ca), &[]).unwrap_err();
    assert!(error.to_string().contains(&missing_ca.display().to_string()), "{error}");
}
