//! PostgreSQL event store: several ledger nodes share one database, and each node commits
//! its appends in groups.
//!
//! The design, and why (DESIGN.md next to this crate has the measurements):
//!
//! - **Positions without gaps for readers.** Every append transaction takes its positions
//!   by updating the one row of `ledger_position` (`UPDATE ... SET last = last + n`) before
//!   it inserts anything, and holds that row lock until COMMIT. PostgreSQL makes a
//!   transaction's commit visible to new snapshots *before* it releases the transaction's
//!   locks, so the next appender (of any node) cannot take positions until the previous ones
//!   are visible: commits become visible in position order, positions are contiguous (a
//!   rolled-back transaction rolls the counter back too), and every snapshot holds a gap-free
//!   prefix of the global order. A reader of `position > after` therefore never skips an
//!   event that commits late, with no `xmin` horizon tricks. The cost: commits of all nodes
//!   are serialised, each holding the lock through its WAL flush.
//! - **Group commit per node.** One writer task per store takes everything queued (up to
//!   [`MAX_BATCH`] appends) and commits it as one transaction (see `writer.rs`), so the lock
//!   is taken once per group, not once per append, and held only for the insert and the
//!   commit, never across a round trip to this process. Each append still succeeds or fails
//!   on its own: versions are checked in memory before anything is inserted.
//! - **Expected versions in the database.** The writer checks versions against heads it
//!   knows to be lower bounds (versions only grow); `UNIQUE (stream, version)` refuses an
//!   insert behind a stale head, and the group is then redone with heads read under the
//!   position lock, which every writer takes before inserting, so they are exact.
//! - **Durable on acknowledgement.** Callers are answered after COMMIT returned, with the
//!   server's `synchronous_commit` (on by default) deciding what "committed" means.
//! - **Subscriptions** have their own connection: `LISTEN ledger_events` (appends notify in
//!   their transaction, so the notification arrives only once the events are visible) plus a
//!   poll every 500 ms as a fallback; a broken connection is replaced with backoff and reading
//!   resumes after the last event returned.
//! - **Schema**: created and migrated on start, in one transaction under an advisory lock;
//!   `ledger_meta` holds [`FORMAT_VERSION`] and a newer one is refused, unchanged.
//!
//! Idempotency and conflict rules are exactly those of [`ledger_store::conformance`]: a
//! retry is recognised by the events stored in the slots it aims for. As in the SQLite store,
//! event ids are not indexed: an id is only ever compared with the event in its slot.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use ledger_store::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod config;
mod error;
mod hooks;
mod plan;
mod reader;
mod schema;
mod subscription;
mod validate;
mod writer;

pub use config::POOL_SIZE;
#[cfg(feature = "test-hooks")]
pub use hooks::CommitHold;
pub use schema::{FORMAT_VERSION, NOTIFY_CHANNEL};
pub use writer::{MAX_BATCH, QUEUE_CAPACITY};

use error::{pool_unavailable, unavailable};
use schema::Sql;
use subscription::PostgresSubscription;

/// The PostgreSQL event store of one node. Appends go through its writer task; reads use a
/// small pool of connections; each subscription has a connection of its own. Dropping the
/// store stops the writer once its queue is drained; [`PostgresStore::close`] waits for that.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    /// Settings for subscription connections.
    subscriber: tokio_postgres::Config,
    requests: mpsc::Sender<writer::Request>,
    writer: JoinHandle<()>,
    #[cfg(feature = "test-hooks")]
    hooks: Arc<hooks::Hooks>,
}

impl PostgresStore {
    /// Connects to the database `url` names (`postgres://user@host:port/database?...`) and
    /// prepares the schema: the one the URL's `options=-c search_path=NAME` puts first, else
    /// the session's current schema (usually `public`). Fails with `Invalid` for a URL that
    /// cannot be parsed, `Unavailable` when the server cannot be reached, and `Incompatible`
    /// for a schema written by a newer format.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let config = config::parse(url)?;
        let schema = config::schema_from_options(&config);
        Self::open(config, schema).await
    }

    /// Like [`PostgresStore::connect`], in `schema` (created if missing) whatever the URL
    /// says. Lets several stores, or tests, share a database without seeing each other.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        config::check_schema(schema)?;
        let config = config::parse(url)?;
        Self::open(config, Some(schema.to_owned())).await
    }

    async fn open(
        config: tokio_postgres::Config,
        schema: Option<String>,
    ) -> Result<PostgresStore, StoreError> {
        let target = config::target(&config);
        let subscriber = config::subscription_config(&config);
        let pool = config::pool(config)?;
        let client = pool.get().await.map_err(|error| {
            pool_unavailable(&format!("cannot connect to postgresql at {target}"), error)
        })?;
        let schema = match schema {
            Some(schema) => schema,
            None => current_schema(&client).await?,
        };
        if let Err(error) = schema::migrate(&client, &schema).await {
            // The connection may be left inside the failed transaction.
            drop(Object::take(client));
            return Err(error);
        }
        drop(client);
        let sql = Arc::new(Sql::new(&schema));
        let hooks = Arc::new(hooks::Hooks::default());
        let (requests, writer) = writer::spawn(pool.clone(), Arc::clone(&sql), Arc::clone(&hooks));
        Ok(PostgresStore {
            pool,
            sql,
            subscriber,
            requests,
            writer,
            #[cfg(feature = "test-hooks")]
            hooks,
        })
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.sql.schema
    }

    /// Stops accepting appends, waits until every queued append is committed and answered,
    /// and closes the pooled connections.
    pub async fn close(self) -> Result<(), StoreError> {
        let PostgresStore {
            pool,
            requests,
            writer,
            ..
        } = self;
        // The writer ends when its channel is closed and drained.
        drop(requests);
        let joined = writer.await;
        pool.close();
        joined.map_err(|error| StoreError::Unavailable(format!("the writer task failed: {error}")))
    }

    /// Test hook: the next group commit that writes events stops after its inserts, before
    /// its COMMIT, until the returned handle is released or dropped.
    #[cfg(feature = "test-hooks")]
    pub fn hold_next_commit(&self) -> CommitHold {
        self.hooks.arm()
    }

    async fn connection(&self, what: &str) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|error| pool_unavailable(what, error))
    }
}

/// The session's current schema, for a URL that names none.
async fn current_schema(client: &Object) -> Result<String, StoreError> {
    let row = client
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(|error| unavailable("reading the current schema", &error))?;
    row.get::<_, Option<String>>(0).ok_or_else(|| {
        StoreError::Invalid(
            "the session has no current schema: name one with options=-c search_path=NAME \
             or connect_in_schema"
                .into(),
        )
    })
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate::append(stream, expected, &events)?;
        let (reply, answer) = oneshot::channel();
        let request = writer::Request {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| writer::stopped())?;
        answer.await.map_err(|_| writer::stopped())?
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate::stream_to_read(stream)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let what = format!("reading stream {stream}");
        let client = self.connection(&what).await?;
        let statement = client
            .prepare_cached(&self.sql.read_stream)
            .await
            .map_err(|error| unavailable(&what, &error))?;
        reader::read_stream(&client, &statement, stream, from_version, limit)
            .await
            .map_err(|error| unavailable(&what, &error))
    }

    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let what = "reading all streams";
        let client = self.connection(what).await?;
        let statement = client
            .prepare_cached(&self.sql.read_all)
            .await
            .map_err(|error| unavailable(what, &error))?;
        reader::read_all(&client, &statement, after, limit)
            .await
            .map_err(|error| unavailable(what, &error))
    }

    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let subscription =
            PostgresSubscription::start(self.subscriber.clone(), Arc::clone(&self.sql), after)
                .await?;
        Ok(Box::new(subscription))
    }

    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError> {
        let what = "reading the head position";
        let client = self.connection(what).await?;
        let statement = client
            .prepare_cached(&self.sql.head_position)
            .await
            .map_err(|error| unavailable(what, &error))?;
        reader::head_position(&client, &statement)
            .await
            .map_err(|error| unavailable(what, &error))
    }
}
