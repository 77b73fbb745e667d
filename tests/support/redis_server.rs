//! A real `redis-server` on a free loopback port, for the tests of the
//! shared health store: started as a child process (no disk: `--save ''
//! --appendonly no`), killed on drop. Without the binary a test is skipped
//! with a loud message, unless `LLM_FALLBACK_REQUIRE_REDIS=1` (CI sets it),
//! where a missing server fails the test.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts one, or `None` (after saying so loudly) when `redis-server`
    /// is not installed and CI did not require it.
    pub fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            let required = std::env::var("LLM_FALLBACK_REQUIRE_REDIS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "LLM_FALLBACK_REQUIRE_REDIS=1 but redis-server is not installed (.ci/run installs it)"
            );
            eprintln!("\n!!!!! SKIPPED: redis-server is not installed; install it (apt-get install redis-server) to run the shared-health tests !!!!!\n");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut server = RedisServer { child: None, port };
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (its data goes with it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    #[allow(dead_code)] // not every test binary restarts it
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        // Bounded wait for it to listen.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
