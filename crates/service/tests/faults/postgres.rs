//! Faults on the PostgreSQL store: the wrapper's faults over a real server, backends killed
//! with `pg_terminate_backend` under load (on the shared test database, only this test's
//! own connections, found by their `application_name`), and a private server of the test's
//! own stopped and restarted under load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ledger_store::EventStore;
use ledger_store_postgres::PostgresStore;
use tokio_postgres::NoTls;
use uuid::Uuid;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{load_until, open_accounts, recover_and_check, run_command, Server};
use crate::wrapper::{answer_lost_after_durable, append_failing_before_durable, outage_under_load};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The reason, when this is not CI, to skip a test that needs `what`; on CI it fails.
fn missing(what: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing ({why}); CI must provide it"
    );
    eprintln!("\n*** SKIPPING a PostgreSQL fault test: {what} is missing ({why}) ***\n");
}

/// The shared test database, if it answers.
async fn database() -> Option<String> {
    let url = std::env::var("LEDGER_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, NoTls),
    )
    .await
    {
        Ok(Ok(_)) => Some(url),
        Ok(Err(error)) => {
            missing(&format!("PostgreSQL at {url}"), &error.to_string());
            None
        }
        Err(_) => {
            missing(&format!("PostgreSQL at {url}"), "no answer within 10 s");
            None
        }
    }
}

/// `url` with `application_name` set, so the test can find its own backends.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("a raw connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A schema of one test on the shared database, dropped when the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str) -> Schema {
        Schema {
            url: url.to_owned(),
            name: format!("ledger_faults_{}", Uuid::new_v4().simple()),
        }
    }

    async fn store(&self, url: &str) -> Arc<dyn EventStore> {
        Arc::new(
            PostgresStore::connect_in_schema(url, &self.name)
                .await
                .expect("open the store"),
        )
    }

    async fn drop_it(self) {
        let _ = raw(&self.url)
            .await
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_faults_answer_503_and_a_lost_answer_is_charged_once() {
    let Some(url) = database().await else { return };
    let schema = Schema::new(&url);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = Server::start(schema.store(&url).await, dir.path()).await;
    server.open_funded("p1").await;
    let mut requests = append_failing_before_durable(&server, "p1").await;
    server.open_funded("p2").await;
    requests += answer_lost_after_durable(&server, "p2").await;
    let accounts = open_accounts(&server, "po", 3).await;
    requests += outage_under_load(&server, &accounts).await;
    println!(
        "postgres wrapper: {} faults injected, {requests} requests",
        server.faults.injected()
    );
    server.stop().await;
    schema.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backends_killed_under_load_lose_and_double_nothing() {
    let Some(url) = database().await else { return };
    let schema = Schema::new(&url);
    let name = format!(
        "ledger-faults-{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = Server::start(
        schema.store(&with_application_name(&url, &name)).await,
        dir.path(),
    )
    .await;
    let accounts = open_accounts(&server, "k", 3).await;
    let done = AtomicBool::new(false);
    let killer = async {
        let admin = raw(&url).await;
        let mut killed = 0_i64;
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Only this test's connections: the store's and its subscription's.
            let row = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE application_name LIKE $1 || '%'",
                    &[&name],
                )
                .await
                .expect("terminate the test's backends");
            killed += row.get::<_, i64>(0);
        }
        done.store(true, Ordering::SeqCst);
        killed
    };
    let load = load_until(&server, &accounts, 4, (10, 500), &done, "killed");
    let (load, killed) = tokio::join!(load, killer);
    assert!(killed > 0, "no backend was terminated");
    let requests = recover_and_check(&server, &accounts, load).await;
    println!("postgres backends killed: {killed} backends terminated, {requests} requests");
    server.stop().await;
    schema.drop_it().await;
}

/// A PostgreSQL server of this test's own, in a temporary directory on a free port: the
/// shared one must never be stopped. Stopped (immediately, like a crash) when dropped.
struct PrivateServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivateServer {
    /// Creates and starts one, or says why it cannot.
    fn start() -> Result<PrivateServer, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|error| format!("/usr/lib/postgresql: {error}"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max_by_key(|bin| {
                bin.parent()
                    .and_then(|version| version.file_name())
                    .and_then(|version| version.to_str())
                    .and_then(|version| version.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .ok_or("no /usr/lib/postgresql/*/bin/initdb")?;
        let dir =
            std::env::temp_dir().join(format!("ledger-faults-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| error.to_string())?
            .port();
        let server = PrivateServer { bin, dir, port };
        // PostgreSQL refuses to run as root: its files belong to `postgres`.
        run_command("chown", &["postgres:postgres", &text(&server.dir)])?;
        server.as_postgres(
            "initdb",
            &["-D", &text(&server.data()), "-A", "trust", "-U", "postgres"],
        )?;
        server.pg_ctl("start")?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = text(&self.bin.join(tool));
        let mut all = vec!["-u", "postgres", "--", program.as_str()];
        all.extend_from_slice(args);
        run_command("runuser", &all)
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            text(&self.dir)
        );
        let log = text(&self.dir.join("log"));
        let data = text(&self.data());
        match action {
            "start" => self.as_postgres(
                "pg_ctl",
                &[
                    "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
                ],
            ),
            // Immediate: no checkpoint, clients cut off, as in a crash.
            _ => self.as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]),
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_and_doubles_nothing() {
    let private = match tokio::task::spawn_blocking(PrivateServer::start)
        .await
        .expect("start a private server")
    {
        Ok(private) => private,
        Err(why) => return missing("a private PostgreSQL server", &why),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn EventStore> = Arc::new(
        PostgresStore::connect(&private.url())
            .await
            .expect("open the store"),
    );
    let server = Server::start(store, dir.path()).await;
    let accounts = open_accounts(&server, "r", 3).await;
    let done = AtomicBool::new(false);
    let private = Arc::new(private);
    let restarts = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stopping = Arc::clone(&private);
            tokio::task::spawn_blocking(move || stopping.pg_ctl("stop"))
                .await
                .expect("stop")
                .expect("stop the private server");
            // Down: the reads served from the views still answer.
            server.assert_views_answer(&accounts[0]).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let starting = Arc::clone(&private);
            tokio::task::spawn_blocking(move || starting.pg_ctl("start"))
                .await
                .expect("start")
                .expect("start the private server again");
        }
        done.store(true, Ordering::SeqCst);
    };
    let load = load_until(&server, &accounts, 4, (10, 2_000), &done, "restart");
    let (load, ()) = tokio::join!(load, restarts);
    let refused = load.unavailable.len();
    assert!(refused > 0, "no command met the stopped server");
    let requests = recover_and_check(&server, &accounts, load).await;
    println!("postgres restarted twice under load: {refused} refused, {requests} requests");
    server.stop().await;
    drop(private);
}
