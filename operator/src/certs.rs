//! The certificates of `spec.tls.mode: Auto`: one CA per cluster; a member certificate
//! (server and client use: the client port, and both ends of the peers' mutual TLS);
//! and a client certificate for the operator, which `raftctl` and etcdctl can use too.
//!
//! Pure functions of PEM text and the clock: where the material lives (Secrets on
//! Kubernetes, files for `raftctl up`) is the platform's business. [`renewal`] decides
//! when a certificate must be issued again: missing, unreadable, issued by another CA,
//! not covering the names it must, or within `renew_before` of its expiry. Renewal keeps
//! the CA, so members and clients that trust it need nothing new; raft-node re-reads its
//! certificate files when they change, so a renewed certificate needs no restart.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::{Error, Result};

/// How long a CA made by the operator is valid. It is not rotated automatically (the
/// leaf certificates are); a CA this old is replaced by deleting its Secret, which
/// re-issues everything (members then need a rolling restart to trust the new CA).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Certificates are back-dated this much, for clocks a little behind the operator's.
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Common name of the operator's client certificate.
pub const OPERATOR_CN: &str = "raft-operator";

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn cert_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| cert_error("clock before 1970", e))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| cert_error("time out of range", e))
}

fn validity(params: &mut CertificateParams, now: SystemTime, valid_for: Duration) -> Result<()> {
    params.not_before = offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
    params.not_after = offset(now + valid_for)?;
    Ok(())
}

/// The CA's parameters: [`new_authority`] signs them once; [`issue`] rebuilds them from
/// the common name, which gives an issuer with the same subject and key identifier, all
/// that signing a leaf needs.
fn authority_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_error("CA", e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kuberaft");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A new CA for the cluster named `subject` (its common name carries the creation time,
/// so certificates of an earlier CA of the same cluster are told apart by issuer).
pub fn new_authority(subject: &str, now: SystemTime) -> Result<Pem> {
    let key = KeyPair::generate().map_err(|e| cert_error("generating a CA key", e))?;
    let created = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut params = authority_params(&format!("kuberaft CA {subject} {created}"))?;
    validity(&mut params, now, CA_VALIDITY)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| cert_error("signing the CA", e))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What a certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub common_name: String,
    /// DNS names (wildcards allowed) and IP addresses, as text.
    pub names: Vec<String>,
    /// Server use (and client use); `false`: client use only.
    pub server: bool,
}

/// A certificate for `request` signed by `ca`, valid for `valid_for` from `now`.
pub fn issue(ca: &Pem, request: &Request, now: SystemTime, valid_for: Duration) -> Result<Pem> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| cert_error("reading the CA key", e))?;
    let issuer = authority_params(&facts(&ca.cert)?.common_name)?
        .self_signed(&ca_key)
        .map_err(|e| cert_error("loading the CA", e))?;
    let key = KeyPair::generate().map_err(|e| cert_error("generating a key", e))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_error("certificate", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, request.common_name.clone());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kuberaft");
    for name in &request.names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e| cert_error(&format!("DNS name {name:?}"), e))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if request.server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, valid_for)?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(|e| cert_error("signing a certificate", e))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What a certificate says about itself, as far as renewal cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub common_name: String,
    pub not_after: SystemTime,
    pub issuer: Vec<u8>,
    pub subject: Vec<u8>,
    /// Subject alternative names as text (DNS names and IP addresses).
    pub names: Vec<String>,
}

/// Reads the first certificate of a PEM text.
pub fn facts(cert_pem: &str) -> Result<Facts> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| cert_error("not a PEM certificate", e))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| cert_error("not an X.509 certificate", e))?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(Facts {
        common_name,
        not_after: UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
        issuer: cert.issuer().as_raw().to_vec(),
        subject: cert.subject().as_raw().to_vec(),
        names,
    })
}

/// Why a certificate must be issued (again), or `None` when the one there is good.
pub fn renewal(
    current: Option<&str>,
    ca_cert: &str,
    request: &Request,
    now: SystemTime,
    renew_before: Duration,
) -> Option<String> {
    let Some(current) = current else {
        return Some("no certificate yet".into());
    };
    let leaf = match facts(current) {
        Ok(f) => f,
        Err(e) => return Some(format!("the certificate there is unreadable ({e})")),
    };
    match facts(ca_cert) {
        Ok(ca) if ca.subject == leaf.issuer => {}
        Ok(_) => return Some("it was issued by another CA".into()),
        Err(e) => return Some(format!("the CA is unreadable ({e})")),
    }
    if let Some(missing) = request.names.iter().find(|n| !leaf.names.contains(n)) {
        return Some(format!("it does not cover {missing}"));
    }
    let left = leaf.not_after.duration_since(now).unwrap_or_default();
    (left <= renew_before).then(|| {
        if left.is_zero() {
            "it has expired".to_string()
        } else {
            format!("it expires in {} h", left.as_secs() / 3600)
        }
    })
}

/// The names a member certificate of cluster `name` in `namespace` covers: every pod
/// through the headless peer Service, the client Service, and the loopback addresses
/// (a sidecar's application and the probes reach the member on localhost).
pub fn member_names(name: &str, namespace: &str, peer_service: &str) -> Vec<String> {
    vec![
        format!("*.{peer_service}.{namespace}.svc"),
        format!("*.{peer_service}.{namespace}.svc.cluster.local"),
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn member() -> Request {
        Request {
            common_name: "demo member".into(),
            names: member_names("demo", "prod", "demo-peer"),
            server: true,
        }
    }

    #[test]
    fn a_member_certificate_covers_every_pod_name_and_loopback_and_chains_to_the_ca() {
        let now = SystemTime::now();
        let ca = new_authority("prod/demo", now).unwrap();
        let leaf = issue(&ca, &member(), now, 90 * DAY).unwrap();
        let facts = facts(&leaf.cert).unwrap();
        assert!(facts.names.contains(&"*.demo-peer.prod.svc".to_string()));
        assert!(facts.names.contains(&"127.0.0.1".to_string()));
        assert_eq!(facts.issuer, super::facts(&ca.cert).unwrap().subject);
        let left = facts.not_after.duration_since(now).unwrap();
        assert!(left > 89 * DAY && left <= 90 * DAY, "{left:?}");
        assert_eq!(
            renewal(Some(&leaf.cert), &ca.cert, &member(), now, 30 * DAY),
            None
        );
    }

    #[test]
    fn renewal_is_due_near_expiry_for_another_ca_and_for_missing_names() {
        let now = SystemTime::now();
        let ca = new_authority("prod/demo", now).unwrap();
        let leaf = issue(&ca, &member(), now, 90 * DAY).unwrap();
        let later = now + 61 * DAY;
        let why = renewal(Some(&leaf.cert), &ca.cert, &member(), later, 30 * DAY).unwrap();
        assert!(why.starts_with("it expires in"), "{why}");
        let why = renewal(Some(&leaf.cert), &ca.cert, &member(), now + 91 * DAY, 30 * DAY).unwrap();
        assert_eq!(why, "it has expired");
        // One second later than the creation time in the CA's name: a different CA.
        let other = new_authority("prod/demo", now + Duration::from_secs(1)).unwrap();
        let why = renewal(Some(&leaf.cert), &other.cert, &member(), now, 30 * DAY).unwrap();
        assert_eq!(why, "it was issued by another CA");
        let mut wider = member();
        wider.names.push("demo.example.com".into());
        let why = renewal(Some(&leaf.cert), &ca.cert, &wider, now, 30 * DAY).unwrap();
        assert_eq!(why, "it does not cover demo.example.com");
        assert_eq!(
            renewal(None, &ca.cert, &member(), now, 30 * DAY).as_deref(),
            Some("no certificate yet")
        );
        let why = renewal(Some("garbage"), &ca.cert, &member(), now, 30 * DAY).unwrap();
        assert!(why.starts_with("the certificate there is unreadable"), "{why}");
    }

    #[test]
    fn a_renewed_certificate_keeps_the_ca() {
        let now = SystemTime::now();
        let ca = new_authority("prod/demo", now).unwrap();
        let first = issue(&ca, &member(), now, 90 * DAY).unwrap();
        let second = issue(&ca, &member(), now + 61 * DAY, 90 * DAY).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            facts(&first.cert).unwrap().issuer,
            facts(&second.cert).unwrap().issuer
        );
        assert_eq!(
            renewal(Some(&second.cert), &ca.cert, &member(), now + 61 * DAY, 30 * DAY),
            None
        );
    }
}
