//! A private S3-compatible server (`s3s-fs`) for one test, which the test can stop and restart.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use artefatos::config::{S3Config, StorageConfig};
use tempfile::TempDir;

/// How long a freshly spawned server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(15);

/// An `s3s-fs` process on a free loopback port with its own root directory and
/// random credentials, killed when dropped. Each subfolder of the root is a bucket.
pub struct S3Server {
    binary: PathBuf,
    port: u16,
    access_key: String,
    secret_key: String,
    /// `root/` holds the buckets, `s3s.log` the server's output.
    base: TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server and returns once it accepts connections.
    pub async fn start() -> Self {
        let binary = find_binary();
        let base = tempfile::Builder::new()
            .prefix("artefatos-s3-")
            .tempdir()
            .expect("temp dir for s3s-fs");
        std::fs::create_dir(base.path().join("root")).expect("s3s-fs root");
        let mut server = S3Server {
            binary,
            port: 0,
            access_key: format!("AK{}", uuid::Uuid::new_v4().simple()),
            secret_key: format!("SK{}", uuid::Uuid::new_v4().simple()),
            base,
            child: None,
        };
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn_and_wait(READY_DEADLINE).await {
                return server;
            }
        }
        panic!("s3s-fs did not start; see {}", server.log_path().display());
    }

    /// `http://127.0.0.1:PORT`, the endpoint clients and presigned URLs use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Storage settings for this server with a bucket name no other test uses
    /// (the bucket itself is created by `Blobs::ensure_bucket`).
    pub fn config(&self) -> StorageConfig {
        StorageConfig::S3(S3Config {
            endpoint: Some(self.endpoint()),
            public_endpoint: None,
            bucket: format!("t-{}", uuid::Uuid::new_v4().simple()),
            region: "us-east-1".into(),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
        })
    }

    /// The directory whose subfolders are the buckets.
    pub fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    /// Kills the server: requests now fail with "connection refused".
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// Starts the server again on the same port with the same root, so objects
    /// stored before `stop` are there again.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + READY_DEADLINE;
        // The old socket may hold the port for a moment after the kill.
        while Instant::now() < deadline {
            if self.spawn_and_wait(deadline - Instant::now()).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "s3s-fs did not restart on port {}; see {}",
            self.port,
            self.log_path().display()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.base.path().join("s3s.log")
    }

    /// Spawns the process and polls until it accepts a connection (true) or
    /// exits or misses the deadline (false, process killed).
    async fn spawn_and_wait(&mut self, within: Duration) -> bool {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("s3s-fs log file");
        let mut child = Command::new(&self.binary)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(self.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("s3s-fs log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", self.binary.display()));
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            // A connect to a loopback port in the ephemeral range that nobody
            // listens on yet can pick that very port as its own source port
            // and "succeed" by connecting to itself: that is not the server.
            let accepted = TcpStream::connect_timeout(&address, Duration::from_millis(200))
                .is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok());
            if accepted {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The environment variables that make a spawned `artefatos` process use
/// `config` (see `Config::from_vars`), for tests that run the binary.
pub fn storage_env(config: &StorageConfig) -> Vec<(&'static str, String)> {
    match config {
        StorageConfig::S3(s3) => {
            let mut env = vec![
                ("S3_BUCKET", s3.bucket.clone()),
                ("AWS_REGION", s3.region.clone()),
            ];
            let optional = [
                ("S3_ENDPOINT", &s3.endpoint),
                ("ARTEFATOS_PUBLIC_S3_ENDPOINT", &s3.public_endpoint),
                ("AWS_ACCESS_KEY_ID", &s3.access_key_id),
                ("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    env.push((name, value.clone()));
                }
            }
            env
        }
        StorageConfig::Filesystem { dir } => {
            vec![("ARTEFATOS_STORAGE_DIR", dir.display().to_string())]
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// `$S3S_FS`, else `s3s-fs` on PATH, else `~/.cargo/bin/s3s-fs`.
fn find_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let in_cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin").join("s3s-fs"));
    on_path
        .chain(in_cargo_home)
        .find(|candidate| candidate.is_file())
        .expect("s3s-fs not found: run scripts/install-s3s.sh")
}
