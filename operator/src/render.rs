//! The children of a RaftCluster, as pure functions of the resource and the planner's
//! [`Children`] parameters: a headless peer Service, a client Service, the StatefulSet
//! and a PodDisruptionBudget.
//!
//! Bootstrap versus join, without a shell in the pod: every pod gets
//! `--initial-cluster` = ordinals `0..replicas-1` of the StatefulSet as rendered now,
//! and `--initial-cluster-state new` until the initial members formed a cluster
//! (`status.bootstrapped`), `existing` afterwards. raft-node ignores both when its data
//! directory holds data (like etcd), so they only matter to a pod starting on empty
//! volumes: an initial member during bootstrap (`new`, the bootstrap list), or a member
//! just added by MemberAdd (`existing`; the StatefulSet is scaled to admit it in the
//! same apply that lists it, so its list is the etcd-style "every member including me").
//! These two env values change with membership and must not restart anyone, so they are
//! left out of the template hash; pods only restart when the operator deletes them
//! (`updateStrategy: OnDelete`) because the hash changed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{RaftCluster, RaftClusterSpec};
use crate::plan::{Children, ClusterState};

pub const CLIENT_PORT: i32 = 2379;
pub const PEER_PORT: i32 = 2380;
pub const METRICS_PORT: i32 = 2381;
/// Pod annotation holding the hash of the user-controllable template inputs.
pub const TEMPLATE_HASH_ANNOTATION: &str = "kuberaft.io/template-hash";
pub const WAL_DIR: &str = "/var/lib/kuberaft/wal";
pub const SNAPSHOT_DIR: &str = "/var/lib/kuberaft/snapshots";
pub const TLS_DIR: &str = "/etc/kuberaft/tls";
/// The distroless "nonroot" user.
const USER_ID: i64 = 65_532;

/// Names of the children of cluster `name`.
pub fn peer_service_name(name: &str) -> String {
    format!("{name}-peer")
}

/// `https` when the cluster uses TLS, else `http`.
pub fn scheme(spec: &RaftClusterSpec) -> &'static str {
    if spec.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Peer URL of ordinal `ordinal` through the headless Service's stable DNS name.
pub fn peer_url(scheme: &str, name: &str, namespace: &str, ordinal: u32) -> String {
    format!(
        "{scheme}://{name}-{ordinal}.{}.{namespace}.svc:{PEER_PORT}",
        peer_service_name(name)
    )
}

/// Labels every child and pod carries.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/managed-by".into(), "raft-operator".into());
    labels.insert("app.kubernetes.io/component".into(), "member".into());
    labels
}

/// The labels the Services, the StatefulSet and the PDB select on.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kuberaft".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// Hash of the inputs of the pod template that the user controls and that need a
/// restart to take effect. Not in it: replicas, storage (immutable), timing (applied
/// live) and the bootstrap env (see the module documentation).
pub fn template_hash(spec: &RaftClusterSpec) -> String {
    #[derive(Serialize)]
    struct Inputs<'a> {
        image: &'a str,
        image_pull_policy: &'a Option<String>,
        snapshot_count: Option<u64>,
        resources: &'a Option<k8s_openapi::api::core::v1::ResourceRequirements>,
        pod_template: &'a Option<crate::crd::PodTemplateOverrides>,
        /// What the pods see of TLS (not the renewal settings: renewal restarts nobody).
        tls: Option<(crate::crd::TlsMode, &'a Option<String>, bool)>,
    }
    let inputs = Inputs {
        image: &spec.image,
        image_pull_policy: &spec.image_pull_policy,
        snapshot_count: spec.snapshot_count,
        resources: &spec.resources,
        pod_template: &spec.pod_template,
        tls: spec
            .tls
            .as_ref()
            .map(|t| (t.mode, &t.secret_name, t.client_cert_auth)),
    };
    let bytes = serde_json::to_vec(&inputs).expect("plain data serializes");
    let digest = Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The four children.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub peer_service: Service,
    pub client_service: Service,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
}

impl Rendered {
    /// All children as a multi-document YAML stream (`raft-operator render`).
    pub fn to_yaml(&self) -> String {
        let docs = [
            serde_norway::to_string(&self.peer_service),
            serde_norway::to_string(&self.client_service),
            serde_norway::to_string(&self.statefulset),
            serde_norway::to_string(&self.pdb),
        ];
        docs.into_iter()
            .map(|d| d.expect("children serialize"))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

fn meta(rc: &RaftCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(rc)),
        labels: Some(labels(&rc.name_any())),
        owner_references: rc.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

pub fn namespace(rc: &RaftCluster) -> String {
    rc.namespace().unwrap_or_else(|| "default".to_string())
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    }
}

fn claim(
    name: &str,
    volume: &crate::crd::Volume,
    labels: &BTreeMap<String, String>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(volume.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The raft-node container.
fn member_container(rc: &RaftCluster, children: &Children) -> Container {
    let spec = &rc.spec;
    let name = rc.name_any();
    let ns = namespace(rc);
    let peer_dns = format!("{}.{ns}.svc", peer_service_name(&name));
    let scheme = scheme(spec);
    let initial_cluster = (0..children.workload_replicas.max(1) as u32)
        .map(|o| format!("{name}-{o}={}", peer_url(scheme, &name, &ns, o)))
        .collect::<Vec<_>>()
        .join(",");
    let token = rc.uid().unwrap_or_else(|| format!("{ns}-{name}"));
    let mut vars = vec![
        env_field("POD_NAME", "metadata.name"),
        env("KUBERAFT_NAME", "$(POD_NAME)"),
        env("KUBERAFT_WAL_DIR", WAL_DIR),
        env("KUBERAFT_SNAPSHOT_DIR", SNAPSHOT_DIR),
        env(
            "KUBERAFT_LISTEN_CLIENT_URLS",
            format!("{scheme}://0.0.0.0:{CLIENT_PORT}"),
        ),
        env(
            "KUBERAFT_ADVERTISE_CLIENT_URLS",
            format!("{scheme}://$(POD_NAME).{peer_dns}:{CLIENT_PORT}"),
        ),
        env(
            "KUBERAFT_LISTEN_PEER_URLS",
            format!("{scheme}://0.0.0.0:{PEER_PORT}"),
        ),
        env(
            "KUBERAFT_INITIAL_ADVERTISE_PEER_URLS",
            format!("{scheme}://$(POD_NAME).{peer_dns}:{PEER_PORT}"),
        ),
        env(
            "KUBERAFT_LISTEN_METRICS_URLS",
            format!("http://0.0.0.0:{METRICS_PORT}"),
        ),
        env("KUBERAFT_INITIAL_CLUSTER", initial_cluster),
        env(
            "KUBERAFT_INITIAL_CLUSTER_STATE",
            match children.initial_cluster_state {
                ClusterState::New => "new",
                ClusterState::Existing => "existing",
            },
        ),
        env("KUBERAFT_INITIAL_CLUSTER_TOKEN", token),
        // Only read when a member starts on empty volumes; later changes go through
        // SetTiming and the log.
        env(
            "KUBERAFT_HEARTBEAT_INTERVAL",
            spec.timing.heartbeat_interval_ms.to_string(),
        ),
        env(
            "KUBERAFT_ELECTION_TIMEOUT",
            spec.timing.election_timeout_ms.to_string(),
        ),
        env("KUBERAFT_LOG_JSON", "true"),
    ];
    if let Some(count) = spec.snapshot_count {
        vars.push(env("KUBERAFT_SNAPSHOT_COUNT", count.to_string()));
    }
    let mut mounts = vec![
        VolumeMount {
            name: "wal".into(),
            mount_path: WAL_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "snapshots".into(),
            mount_path: SNAPSHOT_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if let Some(tls) = &spec.tls {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        // One certificate for both ports (server and client use); the peer port always
        // requires the other member's certificate.
        for (flag, file) in [
            ("CERT_FILE", "tls.crt"),
            ("KEY_FILE", "tls.key"),
            ("TRUSTED_CA_FILE", "ca.crt"),
            ("PEER_CERT_FILE", "tls.crt"),
            ("PEER_KEY_FILE", "tls.key"),
            ("PEER_TRUSTED_CA_FILE", "ca.crt"),
        ] {
            vars.push(env(&format!("KUBERAFT_{flag}"), format!("{TLS_DIR}/{file}")));
        }
        vars.push(env("KUBERAFT_CLIENT_CERT_AUTH", tls.client_cert_auth.to_string()));
        vars.push(env("KUBERAFT_PEER_CLIENT_CERT_AUTH", "true"));
    }
    Container {
        name: "raft-node".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(vars),
        ports: Some(vec![
            port("client", CLIENT_PORT),
            port("peer", PEER_PORT),
            port("metrics", METRICS_PORT),
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        // WAL replay of a large log may take a while; liveness starts after this.
        startup_probe: Some(http_probe("/healthz", 5, 60)),
        // A start-up that fails leaves its last log lines in the container status
        // (the operator reads them when it replaces a member that cannot start).
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn default_affinity(selector: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector.clone()),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                },
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn default_spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Every child of `rc` with the planner's parameters.
pub fn render(rc: &RaftCluster, children: &Children) -> Rendered {
    let name = rc.name_any();
    let spec = &rc.spec;
    let selector = selector_labels(&name);
    let labels = labels(&name);
    let overrides = spec.pod_template.clone().unwrap_or_default();

    let peer_service = Service {
        metadata: meta(rc, peer_service_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Members must find each other before they are ready (bootstrap).
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ports: Some(vec![
                service_port("peer", PEER_PORT),
                service_port("client", CLIENT_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let client_service = Service {
        metadata: meta(rc, name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![
                service_port("client", CLIENT_PORT),
                service_port("metrics", METRICS_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let member = member_container(rc, children);
    let (init_containers, containers) = if overrides.containers.is_empty() {
        (None, vec![member])
    } else {
        // Native sidecar: up before the application, stopped after it.
        let mut sidecar = member;
        sidecar.restart_policy = Some("Always".into());
        (Some(vec![sidecar]), overrides.containers.clone())
    };
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }];
    if let Some(tls) = &spec.tls {
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.member_secret(&name)),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels.clone());
    let mut pod_annotations = overrides.annotations.clone();
    pod_annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), template_hash(spec));
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            init_containers,
            containers,
            volumes: Some(volumes),
            affinity: Some(
                overrides
                    .affinity
                    .clone()
                    .unwrap_or_else(|| default_affinity(&selector)),
            ),
            topology_spread_constraints: Some(if overrides.topology_spread_constraints.is_empty() {
                default_spread(&selector)
            } else {
                overrides.topology_spread_constraints.clone()
            }),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            node_selector: (!overrides.node_selector.is_empty()).then(|| overrides.node_selector.clone()),
            priority_class_name: overrides.priority_class_name.clone(),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(USER_ID),
                run_as_group: Some(USER_ID),
                fs_group: Some(USER_ID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(30),
            enable_service_links: Some(false),
            ..Default::default()
        }),
    };
    let statefulset = StatefulSet {
        metadata: meta(rc, name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(children.workload_replicas),
            service_name: Some(peer_service_name(&name)),
            // All initial members must start together to form a quorum.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            // The operator deletes a removed member's volumes itself, after MemberRemove.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".into()),
                when_scaled: Some("Retain".into()),
            }),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template,
            volume_claim_templates: Some(vec![
                claim("wal", &spec.storage.wal, &labels),
                claim("snapshots", &spec.storage.snapshots, &labels),
            ]),
            ..Default::default()
        },
        ..Default::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(rc, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(children.voters))),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Rendered {
        peer_service,
        client_service,
        statefulset,
        pdb,
    }
}

/// Pods that may be down at once without losing quorum, whichever pods they are: with
/// `voters` voters a quorum survives `(voters - 1) / 2` of them going away (0 for one
/// or two voters: then no voluntary disruption is allowed at all).
pub fn max_unavailable(voters: i32) -> i32 {
    (voters.max(1) - 1) / 2
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Parses a RaftCluster manifest (`raft-operator render -f`), checking what the API
/// server's schema would check first (kind, apiVersion, replicas).
pub fn parse_manifest(text: &str) -> crate::Result<RaftCluster> {
    let value: serde_json::Value =
        serde_norway::from_str(text).map_err(|e| crate::Error::Manifest(format!("not YAML: {e}")))?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    if kind != "RaftCluster" || api_version != "kuberaft.io/v1alpha1" {
        return Err(crate::Error::Manifest(format!(
            "expected kind RaftCluster, apiVersion kuberaft.io/v1alpha1; found {kind:?}, {api_version:?}"
        )));
    }
    let rc: RaftCluster = serde_json::from_value(value)
        .map_err(|e| crate::Error::Manifest(format!("not a RaftCluster: {e}")))?;
    if !(1..=crate::crd::REPLICAS_MAX).contains(&rc.spec.replicas) {
        return Err(crate::Error::Manifest(format!(
            "spec.replicas must be 1 to {}, not {}",
            crate::crd::REPLICAS_MAX,
            rc.spec.replicas
        )));
    }
    if let Some(backup) = &rc.spec.backup {
        // A schedule or destination that cannot work is refused before anything runs.
        crate::backup::validate(backup).map_err(crate::Error::Manifest)?;
    }
    if let Some(source) = crate::restore::source(&rc.spec) {
        crate::restore::validate(source).map_err(crate::Error::Manifest)?;
    }
    if let Some(tls) = &rc.spec.tls {
        // The CRD's CEL rules, for where no API server runs them (`raftctl up`).
        if tls.mode == crate::crd::TlsMode::Secret && tls.secret_name.is_none() {
            return Err(crate::Error::Manifest(
                "tls.mode Secret needs tls.secretName".into(),
            ));
        }
        if tls.renew_before_days >= tls.certificate_validity_days {
            return Err(crate::Error::Manifest(
                "tls.renewBeforeDays must be less than tls.certificateValidityDays".into(),
            ));
        }
    }
    Ok(rc)
}
