//! TLS for the client listener and gRPC: loading the operator's certificate
//! chain and key into a rustls server configuration (TLS 1.3 and 1.2 only,
//! rustls' modern AEAD suites only, ring as the crypto provider), and
//! `ourchat gen-cert`'s development pair: a throwaway CA plus a server
//! certificate it signs, so clients pin the CA file the way they would a
//! real one. The handshake itself runs in the connection's task (see
//! `server::accept_tls`), never blocking the reactor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The certificate and key do not make a usable configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Generating a development pair failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a generated file failed.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The rustls server configuration for a PEM certificate chain (leaf
/// first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::File {
        path: key_file.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; an empty file is an error.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(chain)
}

/// Files written by [`generate_dev_pair`].
#[derive(Debug, Clone)]
pub struct DevPair {
    /// The CA certificate clients trust (`--ca-file`).
    pub ca_cert: PathBuf,
    /// The server certificate chain (`tls.cert_file`).
    pub cert: PathBuf,
    /// The server key (`tls.key_file`), readable by the owner only.
    pub key: PathBuf,
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`: a development CA
/// and a server certificate it signs for `names` (DNS names or IP
/// addresses). ECDSA P-256: the cheapest handshake signature.
pub fn generate_dev_pair(dir: &Path, names: &[String]) -> Result<DevPair, TlsError> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "OurChat development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "OurChat server");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let pair = DevPair {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), TlsError> {
        crate::auth::write_file(path, text.as_bytes(), mode).map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write(&pair.ca_cert, &ca.pem(), 0o644)?;
    // The chain a client is sent: the leaf, then the CA that signed it.
    write(&pair.cert, &format!("{}{}", cert.pem(), ca.pem()), 0o644)?;
    write(&pair.key, &key.serialize_pem(), 0o600)?;
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pair =
            generate_dev_pair(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(server_config(&pair.cert, &pair.key).is_ok());
        assert_eq!(load_certificates(&pair.cert).unwrap().len(), 2);

        let err = server_config(&pair.key, &pair.key).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
        let err = server_config(&pair.cert, &pair.cert)
            .unwrap_err()
            .to_string();
        assert!(err.contains("private key"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(server_config(&missing, &pair.key).is_err());
    }
}
