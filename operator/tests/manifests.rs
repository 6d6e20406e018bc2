//! The committed CRD and the examples: the CRD file is exactly the generator's output,
//! every example parses and renders, and the rendered children keep their promises
//! (quorum-safe PDB, probes, non-root read-only root filesystem, OnDelete, volume claim
//! templates, spread). Schema validation against Kubernetes' own schemas is
//! `scripts/check-manifests.sh` (kubernetes-validate --strict).

use std::path::PathBuf;

use kuberaft_operator::crd::crd_yaml;
use kuberaft_operator::plan::{Children, ClusterState};
use kuberaft_operator::render::{self, max_unavailable, parse_manifest, render, template_hash};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> kuberaft_operator::crd::RaftCluster {
    let text = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
    parse_manifest(&text).unwrap()
}

fn fresh(replicas: i32) -> Children {
    Children {
        workload_replicas: replicas,
        initial_cluster_state: ClusterState::New,
        voters: replicas,
    }
}

#[test]
fn the_committed_crd_is_exactly_what_the_generator_prints() {
    let committed = std::fs::read_to_string(root().join("crds/raftcluster.yaml")).unwrap();
    assert!(
        committed == crd_yaml(),
        "crds/raftcluster.yaml is stale: run `cargo run -p kuberaft-operator --bin raft-operator -- crd > crds/raftcluster.yaml`"
    );
}

#[test]
fn the_committed_backup_crd_is_exactly_what_the_generator_prints_and_the_chart_ships_both() {
    let committed = std::fs::read_to_string(root().join("crds/raftbackup.yaml")).unwrap();
    assert!(
        committed == kuberaft_operator::crd::backup_crd_yaml(),
        "crds/raftbackup.yaml is stale: run `cargo run -p kuberaft-operator --bin raft-operator -- crd --backup > crds/raftbackup.yaml`"
    );
    for file in ["raftcluster.yaml", "raftbackup.yaml"] {
        let chart = std::fs::read_to_string(root().join("charts/kuberaft-operator/crds").join(file)).unwrap();
        let generated = std::fs::read_to_string(root().join("crds").join(file)).unwrap();
        assert!(
            chart == generated,
            "charts/kuberaft-operator/crds/{file} differs from crds/{file}"
        );
    }
    let crd: serde_json::Value = serde_norway::from_str(&committed).unwrap();
    assert_eq!(crd["spec"]["names"]["kind"], "RaftBackup");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let phases = &schema["properties"]["status"]["properties"]["phase"]["enum"];
    assert_eq!(
        phases,
        &serde_json::json!(["Pending", "Running", "Succeeded", "Failed"])
    );
    for text in [committed.as_str(), crd_yaml().as_str()] {
        assert!(
            text.contains("has(self.path) != has(self.s3)"),
            "the destination's one-of rule"
        );
    }
}

#[test]
fn a_manifest_with_an_invalid_backup_schedule_or_destination_is_rejected() {
    let text = std::fs::read_to_string(root().join("examples/minimal.yaml")).unwrap();
    let with = |backup: &str| format!("{}\n  backup:\n{backup}", text.trim_end());
    let ok = with("    schedule: \"0 */6 * * *\"\n    retention: {count: 3, maxAge: 7d}\n    destination: {path: /var/backups}\n");
    assert!(parse_manifest(&ok).unwrap().spec.backup.is_some());
    let bad_cron = with("    schedule: \"at midnight\"\n    destination: {path: /var/backups}\n");
    let e = parse_manifest(&bad_cron).unwrap_err().to_string();
    assert!(e.contains("spec.backup.schedule"), "{e}");
    let no_destination = with("    schedule: \"0 * * * *\"\n    destination: {}\n");
    let e = parse_manifest(&no_destination).unwrap_err().to_string();
    assert!(e.contains("exactly one of path and s3"), "{e}");
    let bad_age =
        with("    schedule: \"0 * * * *\"\n    retention: {maxAge: forever}\n    destination: {path: /b}\n");
    assert!(parse_manifest(&bad_age)
        .unwrap_err()
        .to_string()
        .contains("maxAge"));
}

#[test]
fn a_manifest_with_an_unusable_from_backup_is_rejected_with_the_field_named() {
    let text = std::fs::read_to_string(root().join("examples/minimal.yaml")).unwrap();
    let with = |source: &str| format!("{}\n  bootstrap:\n    fromBackup:\n{source}", text.trim_end());
    let ok = with("      path: /backups/b.snap\n");
    assert!(parse_manifest(&ok).unwrap().spec.bootstrap.is_some());
    let s3 = with("      s3: {bucket: bkt, key: a/b.snap, endpoint: \"http://127.0.0.1:9000\"}\n");
    assert!(parse_manifest(&s3).is_ok());
    for (bad, says) in [
        ("      path: backups/b.snap\n", "must be an absolute path"),
        (
            "      path: /b.snap\n      s3: {bucket: bkt, key: k}\n",
            "exactly one of path and s3",
        ),
        ("      {}\n", "exactly one of path and s3"),
        ("      path: /b.snap\n      sha256: abc\n", "fromBackup.sha256"),
        ("      s3: {bucket: bkt, key: /}\n", "s3.key is empty"),
        (
            "      s3: {bucket: bkt, key: k, endpoint: \"minio:9000\"}\n",
            "http:// or https://",
        ),
    ] {
        let e = parse_manifest(&with(bad)).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn the_crd_carries_the_subresources_columns_and_cel_rules() {
    let crd: serde_json::Value = serde_norway::from_str(&crd_yaml()).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "raft");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Replicas", "Ready", "Leader", "Phase", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["replicas"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(spec["properties"]["replicas"]["maximum"].as_f64(), Some(9.0));
    let text = crd_yaml();
    for rule in [
        "self == oldSelf",
        "isQuantity(self)",
        "self.electionTimeoutMs >= 3 * self.heartbeatIntervalMs",
    ] {
        assert!(text.contains(rule), "missing CEL rule {rule}");
    }
}

#[test]
fn every_example_renders_four_children() {
    for name in ["minimal.yaml", "production.yaml", "adaptive-timing.yaml"] {
        let rc = example(name);
        let yaml = render(&rc, &fresh(rc.spec.replicas)).to_yaml();
        let kinds: Vec<String> = yaml
            .split("\n---\n")
            .map(|doc| {
                let v: serde_json::Value = serde_norway::from_str(doc).unwrap();
                v["kind"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            ["Service", "Service", "StatefulSet", "PodDisruptionBudget"],
            "{name}"
        );
    }
}

#[test]
fn a_manifest_of_another_kind_or_with_bad_replicas_is_rejected() {
    assert!(parse_manifest("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n").is_err());
    let text = std::fs::read_to_string(root().join("examples/minimal.yaml"))
        .unwrap()
        .replace("replicas: 3", "replicas: 12");
    assert!(parse_manifest(&text)
        .unwrap_err()
        .to_string()
        .contains("replicas"));
}

#[test]
fn the_pdb_never_allows_a_voluntary_disruption_to_break_quorum() {
    for voters in 1..=9 {
        let allowed = max_unavailable(voters);
        // Whichever pods go, the voters left still form a majority.
        assert!(
            voters - allowed > voters / 2,
            "{voters} voters, {allowed} allowed down"
        );
        // And it is not stricter than needed.
        assert!(voters - (allowed + 1) <= voters / 2, "{voters} voters");
    }
}

#[test]
fn the_statefulset_is_on_delete_with_wal_and_snapshot_claims_probes_and_a_locked_down_container() {
    let rc = example("minimal.yaml");
    let sts = serde_json::to_value(render(&rc, &fresh(3)).statefulset).unwrap();
    let spec = &sts["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "OnDelete");
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let claims: Vec<&str> = spec["volumeClaimTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(claims, ["wal", "snapshots"]);
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [2379, 2380, 2381]);
}

#[test]
fn the_template_hash_ignores_replicas_timing_and_bootstrap_state_but_not_the_image() {
    let rc = example("minimal.yaml");
    let base = template_hash(&rc.spec);
    let mut other = rc.spec.clone();
    other.replicas = 5;
    other.timing.heartbeat_interval_ms = 50;
    other.timing.election_timeout_ms = 500;
    assert_eq!(template_hash(&other), base);
    other.image = "raft-node:2".into();
    assert_ne!(template_hash(&other), base);
    let annotation = |children: &Children| {
        let sts = serde_json::to_value(render(&rc, children).statefulset).unwrap();
        sts["spec"]["template"]["metadata"]["annotations"][render::TEMPLATE_HASH_ANNOTATION].clone()
    };
    let joined = Children {
        workload_replicas: 4,
        initial_cluster_state: ClusterState::Existing,
        voters: 3,
    };
    assert_eq!(annotation(&fresh(3)), annotation(&joined));
}

#[test]
fn a_pod_template_with_application_containers_runs_raft_node_as_a_native_sidecar() {
    let mut rc = example("minimal.yaml");
    rc.spec.pod_template = Some(kuberaft_operator::crd::PodTemplateOverrides {
        containers: vec![k8s_openapi::api::core::v1::Container {
            name: "app".into(),
            image: Some("app:1".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let sts = serde_json::to_value(render(&rc, &fresh(3)).statefulset).unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["name"], "app");
    assert_eq!(pod["initContainers"][0]["name"], "raft-node");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
}

#[test]
fn with_tls_members_serve_https_on_both_ports_with_the_operator_made_secret_and_peer_mutual_tls() {
    let rc = example("production.yaml");
    let rendered = render(&rc, &fresh(5));
    let pod = serde_json::to_value(&rendered.statefulset.spec.template).unwrap();
    let env: std::collections::BTreeMap<String, String> = pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    for url in [
        "KUBERAFT_LISTEN_CLIENT_URLS",
        "KUBERAFT_ADVERTISE_CLIENT_URLS",
        "KUBERAFT_LISTEN_PEER_URLS",
        "KUBERAFT_INITIAL_ADVERTISE_PEER_URLS",
    ] {
        assert!(env[url].starts_with("https://"), "{url}={}", env[url]);
    }
    assert!(env["KUBERAFT_INITIAL_CLUSTER"]
        .split(',')
        .all(|m| m.contains("=https://prod-")));
    assert_eq!(env["KUBERAFT_PEER_CLIENT_CERT_AUTH"], "true");
    assert_eq!(env["KUBERAFT_CLIENT_CERT_AUTH"], "true");
    assert_eq!(env["KUBERAFT_PEER_CERT_FILE"], "/etc/kuberaft/tls/tls.crt");
    assert_eq!(env["KUBERAFT_TRUSTED_CA_FILE"], "/etc/kuberaft/tls/ca.crt");
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("a tls volume");
    assert_eq!(volume["secret"]["secretName"], "prod-tls");
    let mount = pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tls")
        .unwrap()
        .clone();
    assert_eq!(mount["readOnly"], true);
    // Without TLS, plain http everywhere and no certificate flags.
    let plain = render(&example("minimal.yaml"), &fresh(3));
    let text = serde_json::to_string(&plain.statefulset).unwrap();
    assert!(!text.contains("https://") && !text.contains("CERT_FILE"));
    // Renewal settings restart nobody; the mode or client-cert setting does.
    let mut renewed = rc.clone();
    renewed.spec.tls.as_mut().unwrap().renew_before_days = 10;
    assert_eq!(template_hash(&renewed.spec), template_hash(&rc.spec));
    let mut no_client_auth = rc.clone();
    no_client_auth.spec.tls.as_mut().unwrap().client_cert_auth = false;
    assert_ne!(template_hash(&no_client_auth.spec), template_hash(&rc.spec));
}

/// The CRD's CEL rules, evaluated client-side with the API server's CEL libraries
/// (kube-cel), on the examples and on objects each rule must reject.
mod cel_rules {
    use kube_cel::Validator;
    use serde_json::{json, Value};

    fn schema() -> Value {
        let crd: Value = serde_norway::from_str(&super::crd_yaml()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn example(name: &str) -> Value {
        let text = std::fs::read_to_string(super::root().join("examples").join(name)).unwrap();
        serde_norway::from_str(&text).unwrap()
    }

    fn errors(object: &Value, old: Option<&Value>) -> Vec<String> {
        match Validator::new().validate_with_defaults(&schema(), object, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_schema_compiles_and_every_example_passes_its_rules() {
        let compiled = kube_cel::compile_schema(&schema());
        assert!(!compiled.has_errors(), "{:?}", compiled.compilation_errors());
        for name in ["minimal.yaml", "production.yaml", "adaptive-timing.yaml"] {
            let e = example(name);
            assert_eq!(errors(&e, None), Vec::<String>::new(), "{name}");
            assert_eq!(
                errors(&e, Some(&e)),
                Vec::<String>::new(),
                "{name} updated unchanged"
            );
        }
    }

    #[test]
    fn a_backup_destination_needs_exactly_one_of_path_and_s3_and_a_raft_backup_cannot_change() {
        let with = |destination: Value| {
            let mut e = example("minimal.yaml");
            e["spec"]["backup"] = json!({"schedule": "0 * * * *", "destination": destination});
            e
        };
        assert_eq!(errors(&with(json!({"path": "/b"})), None), Vec::<String>::new());
        assert_eq!(
            errors(&with(json!({"s3": {"bucket": "bkt"}})), None),
            Vec::<String>::new()
        );
        for bad in [json!({}), json!({"path": "/b", "s3": {"bucket": "bkt"}})] {
            let found = errors(&with(bad.clone()), None);
            assert!(
                found.iter().any(|m| m.contains("exactly one of path and s3")),
                "{bad}: {found:?}"
            );
        }
        // bootstrap.fromBackup: the same rule.
        let from = |source: Value| {
            let mut e = example("minimal.yaml");
            e["spec"]["bootstrap"] = json!({"fromBackup": source});
            e
        };
        assert_eq!(
            errors(&from(json!({"path": "/b.snap"})), None),
            Vec::<String>::new()
        );
        for bad in [
            json!({}),
            json!({"path": "/b", "s3": {"bucket": "bkt", "key": "k"}}),
        ] {
            let found = errors(&from(bad.clone()), None);
            assert!(
                found
                    .iter()
                    .any(|m| m.contains("fromBackup needs exactly one of path and s3")),
                "{bad}: {found:?}"
            );
        }
        // RaftBackup: the same destination rule, and a spec that never changes.
        let crd: Value = serde_norway::from_str(&kuberaft_operator::crd::backup_crd_yaml()).unwrap();
        let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        let check = |object: &Value, old: Option<&Value>| match Validator::new()
            .validate_with_defaults(&schema, object, old)
        {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        };
        let rb = |path: &str| {
            json!({"apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftBackup",
            "metadata": {"name": "x"}, "spec": {"clusterName": "demo", "destination": {"path": path}}})
        };
        assert_eq!(check(&rb("/a"), None), Vec::<String>::new());
        assert_eq!(check(&rb("/a"), Some(&rb("/a"))), Vec::<String>::new());
        let found = check(&rb("/b"), Some(&rb("/a")));
        assert!(found.iter().any(|m| m.contains("cannot change")), "{found:?}");
    }

    #[test]
    fn inconsistent_timing_is_rejected() {
        let mut e = example("adaptive-timing.yaml");
        e["spec"]["timing"]["electionTimeoutMs"] = json!(250);
        let found = errors(&e, None);
        assert!(found.iter().any(|m| m.contains("at least 3x")), "{found:?}");
        let mut e = example("adaptive-timing.yaml");
        e["spec"]["timing"]["heartbeatIntervalMs"] = json!(400);
        e["spec"]["timing"]["electionTimeoutMs"] = json!(2000);
        let found = errors(&e, None);
        assert!(
            found
                .iter()
                .any(|m| m.contains("heartbeatIntervalMs must lie within")),
            "{found:?}"
        );
    }

    #[test]
    fn a_storage_size_that_is_not_a_quantity_of_at_least_1mi_is_rejected() {
        for size in ["lots", "512Ki"] {
            let mut e = example("minimal.yaml");
            e["spec"]["storage"]["wal"]["size"] = json!(size);
            let found = errors(&e, None);
            assert!(
                found.iter().any(|m| m.contains("at least 1Mi")),
                "{size}: {found:?}"
            );
        }
    }

    #[test]
    fn tls_settings_are_checked_and_tls_cannot_be_switched_after_creation() {
        let base = example("production.yaml");
        let mut secret_without_name = base.clone();
        secret_without_name["spec"]["tls"] = json!({"mode": "Secret"});
        let found = errors(&secret_without_name, None);
        assert!(
            found.iter().any(|m| m.contains("needs tls.secretName")),
            "{found:?}"
        );
        let mut auto_with_name = base.clone();
        auto_with_name["spec"]["tls"] = json!({"mode": "Auto", "secretName": "x"});
        let found = errors(&auto_with_name, None);
        assert!(
            found.iter().any(|m| m.contains("are for mode Secret")),
            "{found:?}"
        );
        let mut renew_too_late = base.clone();
        renew_too_late["spec"]["tls"] = json!({"certificateValidityDays": 30, "renewBeforeDays": 30});
        let found = errors(&renew_too_late, None);
        assert!(
            found.iter().any(|m| m.contains("renewBeforeDays must be less")),
            "{found:?}"
        );
        let mut plain = base.clone();
        plain["spec"].as_object_mut().unwrap().remove("tls");
        let found = errors(&plain, Some(&base));
        assert!(
            found.iter().any(|m| m.contains("cannot be turned on or off")),
            "{found:?}"
        );
        let found = errors(&base, Some(&plain));
        assert!(
            found.iter().any(|m| m.contains("cannot be turned on or off")),
            "{found:?}"
        );
        let mut secret_mode = base.clone();
        secret_mode["spec"]["tls"] = json!({"mode": "Secret", "secretName": "mine"});
        assert_eq!(errors(&secret_mode, None), Vec::<String>::new());
        let found = errors(&secret_mode, Some(&base));
        assert!(
            found.iter().any(|m| m.contains("tls.mode cannot change")),
            "{found:?}"
        );
        // Renewal settings may change.
        let mut longer = base.clone();
        longer["spec"]["tls"]["certificateValidityDays"] = json!(365);
        assert_eq!(errors(&longer, Some(&base)), Vec::<String>::new());
    }

    #[test]
    fn storage_cannot_change_after_creation() {
        let old = example("production.yaml");
        let mut new = old.clone();
        new["spec"]["storage"]["wal"]["storageClassName"] = json!("other");
        let found = errors(&new, Some(&old));
        assert!(
            found.iter().any(|m| m.contains("cannot change after creation")),
            "{found:?}"
        );
        // Other fields may change.
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert_eq!(errors(&scaled, Some(&old)), Vec::<String>::new());
    }
}

#[test]
fn the_binary_prints_the_committed_crd_and_renders_examples_and_rejects_bad_input() {
    let bin = env!("CARGO_BIN_EXE_raft-operator");
    let crd = std::process::Command::new(bin).arg("crd").output().unwrap();
    assert!(crd.status.success());
    let committed = std::fs::read_to_string(root().join("crds/raftcluster.yaml")).unwrap();
    assert!(
        String::from_utf8(crd.stdout).unwrap() == committed,
        "raft-operator crd differs from the file"
    );

    let rc = example("production.yaml");
    let out = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(root().join("examples/production.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        render(&rc, &fresh(5)).to_yaml()
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected kind RaftCluster"));
}
