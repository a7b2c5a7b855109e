//! The container bundle: the compose file wires the stack the README promises, every metric
//! the Grafana dashboard queries is one the code exports, and the bundled jwtgate configs
//! pass `jwtgate check`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Metric names the code declares (`pub const NAME: &str = "jwtgate_…"`).
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["src/metrics.rs", "src/control/mod.rs"] {
        let text = std::fs::read_to_string(root().join(file)).expect("source");
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const") && l.contains("&str"))
        {
            if let Some(name) = line.split('"').nth(1).filter(|n| n.starts_with("jwtgate_")) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Every metric a dashboard query names exists in the code (histogram series included).
#[test]
fn dashboard_queries_only_exported_metrics() {
    let exported = exported();
    assert!(exported.len() >= 12, "{exported:?}");
    let text = std::fs::read_to_string(root().join("docker/grafana/dashboards/jwtgate.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("jwtgate_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                rest = &rest[i + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                queried.insert(base.to_owned());
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    // Windows follow the scrape interval (Grafana's `$__rate_interval`), never a fixed one.
    for window in ["[1m]", "[5m]", "[30s]"] {
        assert!(!text.contains(window), "a fixed rate window {window}");
    }
    for series in [
        "jwtgate_upstream_responses_total",
        "jwtgate_open_connections",
        "jwtgate_jwks_last_refresh_timestamp_seconds",
        "jwtgate_revocation_last_sync_timestamp_seconds",
    ] {
        assert!(queried.contains(series), "no panel for {series}");
    }
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the code does not export: {unknown:?}"
    );
}

/// The compose file has the stack: control plane on PostgreSQL, two gateways, an upstream,
/// Prometheus scraping gateways and control plane, Grafana provisioned with the dashboard.
#[test]
fn compose_file_wires_the_stack() {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).expect("compose");
    let mut compose: serde_norway::Value = serde_norway::from_str(&text).expect("compose is YAML");
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    for s in [
        "postgres",
        "control",
        "gateway-1",
        "gateway-2",
        "upstream",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "missing service {s}");
    }
    // Keys are generated at first run by `keys`, never shipped: every jwtgate service waits
    // for it and mounts its volume; no port is published beyond loopback.
    assert_eq!(
        compose["services"]["keys"]["command"][0].as_str(),
        Some("keygen")
    );
    for s in ["control", "gateway-1", "gateway-2"] {
        let svc = &compose["services"][s];
        assert_eq!(
            svc["depends_on"]["keys"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{s}"
        );
        assert!(
            svc["volumes"]
                .as_sequence()
                .is_some_and(|v| v.iter().any(|m| m.as_str() == Some("keys:/keys:ro"))),
            "{s} does not mount the generated keys"
        );
    }
    for (name, svc) in services {
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap_or("");
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name:?} publishes {port} beyond loopback"
            );
        }
    }
    for file in [
        "docker/config/gateway.yaml",
        "docker/config/control.yaml",
        "docker/compose.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).expect("file");
        for shipped in ["jwks.example.json", "demo-key", "sha256:"] {
            assert!(!text.contains(shipped), "{file} ships a key ({shipped})");
        }
    }
    // Health checks run the binary itself (the image has no curl) against the port and
    // path the service's configuration really serves.
    for (s, url) in [
        ("control", "http://127.0.0.1:9901/healthz"),
        ("gateway-1", "http://127.0.0.1:9900/readyz"),
        ("gateway-2", "http://127.0.0.1:9900/readyz"),
    ] {
        let test: Vec<&str> = compose["services"][s]["healthcheck"]["test"]
            .as_sequence()
            .expect("healthcheck")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(test, ["CMD", "jwtgate", "health", "--url", url], "{s}");
    }
    let port_of = |file: &str, key: &str| {
        let text = std::fs::read_to_string(root().join(file)).expect("config");
        let v: serde_norway::Value = serde_norway::from_str(&text).expect("yaml");
        let addr = match key {
            "admin" => v["admin"]["address"].as_str().map(str::to_owned),
            _ => v[key].as_str().map(str::to_owned),
        };
        addr.and_then(|a| a.rsplit(':').next().map(str::to_owned))
    };
    assert_eq!(
        port_of("docker/config/control.yaml", "listen").as_deref(),
        Some("9901")
    );
    assert_eq!(
        port_of("docker/config/gateway.yaml", "admin").as_deref(),
        Some("9900")
    );
    assert_eq!(
        compose["services"]["gateway-1"]["depends_on"]["control"]["condition"].as_str(),
        Some("service_healthy")
    );
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains(
        r#"HEALTHCHECK --interval=5s --timeout=3s CMD ["/usr/local/bin/jwtgate", "health"]"#
    ));
    // The default command is the self-contained demo, run as the image runs it by
    // `cli::dev_mode_in_a_container`.
    assert!(dockerfile
        .lines()
        .any(|l| l == r#"CMD ["dev", "--bind", "0.0.0.0"]"#));
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for path in ["target/", "config/keys/", ".git/"] {
        assert!(
            ignored.lines().any(|l| l == path),
            ".dockerignore misses {path}"
        );
    }
    for s in ["keys", "control", "gateway-1", "gateway-2"] {
        assert_eq!(
            compose["services"][s]["image"].as_str(),
            Some("jwtgate:local"),
            "{s}: one image for every jwtgate service"
        );
    }
    let control = &compose["services"]["control"];
    assert_eq!(control["command"][0].as_str(), Some("control"));
    assert!(control["environment"]["JWTGATE_PG_URL"]
        .as_str()
        .is_some_and(|u| u.starts_with("postgres://")));
    assert_eq!(
        compose["services"]["gateway-2"]["command"][0].as_str(),
        Some("serve"),
        "the merged anchor"
    );
    let prom =
        std::fs::read_to_string(root().join("docker/prometheus.yml")).expect("prometheus.yml");
    for target in ["gateway-1:9900", "gateway-2:9900", "control:9901"] {
        assert!(prom.contains(target), "Prometheus does not scrape {target}");
    }
    let provisioning =
        std::fs::read_to_string(root().join("docker/grafana/provisioning/dashboards/jwtgate.yaml"))
            .expect("provisioning");
    assert!(provisioning.contains("/var/lib/grafana/dashboards"));
    assert!(text.contains("./grafana/dashboards:/var/lib/grafana/dashboards"));
}

/// The configs the stack runs are valid.
#[test]
fn bundled_configs_pass_check() {
    for file in ["docker/config/gateway.yaml", "docker/config/control.yaml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(["check", "-c"])
            .arg(root().join(file))
            .env(
                "JWTGATE_PG_URL",
                "postgres://jwtgate:jwtgate@postgres:5432/jwtgate",
            )
            .output()
            .expect("check");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Kubernetes manifests: each Deployment runs the config its ConfigMap holds (which
/// `jwtgate check` accepts), exposes the ports that config listens on, probes the paths
/// and port that config serves with `jwtgate health`, and is reached by its Service and
/// covered by a disruption budget.
#[test]
fn kubernetes_manifests_match_their_configs() {
    use serde::Deserialize;
    let mut deployments = 0;
    for file in ["docker/k8s/gateway.yaml", "docker/k8s/control.yaml"] {
        let text = std::fs::read_to_string(root().join(file)).expect("manifest");
        let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
            .map(|d| serde_norway::Value::deserialize(d).expect("YAML document"))
            .collect();
        let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(k));
        for dep in of_kind("Deployment") {
            deployments += 1;
            let name = dep["metadata"]["name"].as_str().expect("name");
            let pod = &dep["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let args: Vec<&str> = c["args"]
                .as_sequence()
                .expect("args")
                .iter()
                .filter_map(|a| a.as_str())
                .collect();
            let path = args[args.iter().position(|a| *a == "-c").expect("-c") + 1];
            // The config file comes from a ConfigMap key mounted at exactly that path.
            let mount = c["volumeMounts"]
                .as_sequence()
                .expect("mounts")
                .iter()
                .find(|m| m["mountPath"].as_str() == Some(path))
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {path}"));
            let volume = pod["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("volume");
            let map_name = volume["configMap"]["name"].as_str().expect("a ConfigMap");
            let map = of_kind("ConfigMap")
                .find(|m| m["metadata"]["name"].as_str() == Some(map_name))
                .expect("the ConfigMap is in the file");
            let key = mount["subPath"].as_str().expect("subPath");
            let config = map["data"][key].as_str().expect("config in the ConfigMap");
            let dir = std::env::temp_dir().join(format!("jwtgate-k8s-{}", fastrand::u64(..)));
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join(key), config).expect("write");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
                .args(["check", "-c"])
                .arg(dir.join(key))
                .env("JWTGATE_PG_URL", "postgres://check@db/jwtgate")
                .output()
                .expect("check");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Ports: every address the config listens on is a container port.
            let cfg: serde_norway::Value = serde_norway::from_str(config).expect("config");
            let mut addrs: Vec<&str> = cfg["listeners"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|l| l["address"].as_str())
                .collect();
            addrs.extend(cfg["admin"]["address"].as_str());
            addrs.extend(cfg["listen"].as_str());
            let ports: Vec<u64> = c["ports"]
                .as_sequence()
                .expect("ports")
                .iter()
                .filter_map(|p| p["containerPort"].as_u64())
                .collect();
            for a in &addrs {
                let port: u64 = a
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port");
                assert!(ports.contains(&port), "{name}: {a} is not a container port");
            }
            // Probes: `jwtgate health` on the admin (or control) port, the right paths.
            let probe_port = cfg["admin"]["address"]
                .as_str()
                .or(cfg["listen"].as_str())
                .and_then(|a| a.rsplit(':').next())
                .expect("probe port");
            for (probe, paths) in [
                ("readinessProbe", ["/readyz", "/healthz"]),
                ("livenessProbe", ["/healthz", "/healthz"]),
            ] {
                let cmd: Vec<&str> = c[probe]["exec"]["command"]
                    .as_sequence()
                    .expect("exec probe")
                    .iter()
                    .filter_map(|a| a.as_str())
                    .collect();
                assert_eq!(&cmd[..3], ["jwtgate", "health", "--url"], "{name} {probe}");
                let url = cmd[3];
                assert!(
                    url.starts_with(&format!("http://127.0.0.1:{probe_port}/"))
                        && paths.iter().any(|p| url.ends_with(p)),
                    "{name} {probe}: {url}"
                );
            }
            // The Service targets a named container port; a PDB covers the pods.
            let labels = &dep["spec"]["template"]["metadata"]["labels"];
            let service = of_kind("Service")
                .find(|s| &s["spec"]["selector"] == labels)
                .expect("a Service selecting the pods");
            for p in service["spec"]["ports"]
                .as_sequence()
                .expect("service ports")
            {
                let target = p["targetPort"].as_str().expect("named targetPort");
                assert!(
                    c["ports"]
                        .as_sequence()
                        .expect("ports")
                        .iter()
                        .any(|cp| cp["name"].as_str() == Some(target)),
                    "{name}: the Service targets {target}"
                );
            }
            assert!(
                of_kind("PodDisruptionBudget")
                    .any(|b| &b["spec"]["selector"]["matchLabels"] == labels),
                "{name}: no PodDisruptionBudget"
            );
        }
    }
    assert_eq!(deployments, 2);
}
