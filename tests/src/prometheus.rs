//! A real Prometheus (Debian's `prometheus`) of the test's own: scraping the given targets every
//! 500 ms, on a free loopback port with its data in a scratch dir, killed on drop; and its HTTP
//! query API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ManagedProcess;
use crate::{free_port, wait_for, ScratchDir};

pub struct Prometheus {
    pub addr: SocketAddr,
    _child: ManagedProcess,
    http: reqwest::Client,
    _dir: ScratchDir,
}

/// One series of a query's answer: its labels and its value (NaN stays NaN).
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`/metrics` over plain HTTP) as job `job`, and waits
    /// until it is ready.
    pub async fn start(job: &str, targets: &[SocketAddr]) -> Self {
        let dir = ScratchDir::new("prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{scrape_interval: 500ms, evaluation_interval: 500ms}}\n\
             scrape_configs:\n  - job_name: {job}\n    scrape_interval: 500ms\n    \
             static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path("prometheus.yml"), config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("prometheus.log")).expect("log file"));
        let child = ManagedProcess::spawn(
            "prometheus",
            &mut command,
            "Debian package `prometheus`; scripts/bootstrap.sh installs it",
        );
        let prometheus = Self {
            addr,
            _child: child,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let ready = format!("http://{addr}/-/ready");
        wait_for("prometheus ready", Duration::from_secs(30), || async {
            let resp = prometheus.http.get(&ready).send().await.ok()?;
            resp.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    /// Evaluates `expr` now; an error answer is the `Err` with Prometheus's message.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://{}/api/v1/query", self.addr),
            &[("query", expr)],
        )
        .map_err(|e| e.to_string())?;
        let body = self.get_json(url).await?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let result = &body["data"]["result"];
        let samples = match body["data"]["resultType"].as_str() {
            Some("vector") => result.as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": result})],
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(samples
            .iter()
            .map(|s| Sample {
                labels: serde_json::from_value(s["metric"].clone()).unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// The values of label `label` over the series `selector` matches (Grafana's `label_values`).
    pub async fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://{}/api/v1/label/{label}/values", self.addr),
            &[("match[]", selector)],
        )
        .expect("label values URL");
        let body = self.get_json(url).await.expect("label values");
        serde_json::from_value(body["data"].clone()).unwrap_or_default()
    }

    async fn get_json(&self, url: reqwest::Url) -> Result<serde_json::Value, String> {
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}
