//! Test hooks: holding a group commit open between its inserts and its COMMIT, so the
//! position-gap test can make later appends race an earlier, uncommitted one. Compiled only
//! with the `test-hooks` feature; without it the writer's check is a constant `false`.

#[cfg(feature = "test-hooks")]
pub use enabled::CommitHold;
#[cfg(feature = "test-hooks")]
pub(crate) use enabled::Hooks;

#[cfg(not(feature = "test-hooks"))]
pub(crate) use disabled::Hooks;

#[cfg(not(feature = "test-hooks"))]
mod disabled {
    /// No hooks: never armed. A field-less struct with braces, so that `Hooks::default()`
    /// reads the same with and without the feature.
    #[derive(Debug, Default)]
    pub(crate) struct Hooks {}

    impl Hooks {
        pub(crate) fn armed(&self) -> bool {
            false
        }

        pub(crate) async fn hold(&self, _last_position: u64) {}
    }
}

#[cfg(feature = "test-hooks")]
mod enabled {
    use std::sync::{Mutex, PoisonError};

    use ledger_store::GlobalPosition;
    use tokio::sync::oneshot;

    /// The signals of an armed hold, on the writer's side.
    #[derive(Debug)]
    struct Armed {
        reached: oneshot::Sender<GlobalPosition>,
        release: oneshot::Receiver<()>,
    }

    /// The hold the next group commit that writes events will stop at, if armed.
    #[derive(Debug, Default)]
    pub(crate) struct Hooks {
        next: Mutex<Option<Armed>>,
    }

    impl Hooks {
        pub(crate) fn arm(&self) -> CommitHold {
            let (reached, reached_rx) = oneshot::channel();
            let (release_tx, release) = oneshot::channel();
            *self.next.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Armed { reached, release });
            CommitHold {
                reached: reached_rx,
                release: release_tx,
            }
        }

        pub(crate) fn armed(&self) -> bool {
            self.next
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        }

        /// Tells the test the group's last position, then waits for its release.
        pub(crate) async fn hold(&self, last_position: GlobalPosition) {
            let armed = self
                .next
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(Armed { reached, release }) = armed {
                let _ = reached.send(last_position);
                // Released explicitly or by the test dropping its handle.
                let _ = release.await;
            }
        }
    }

    /// A group commit held open before its COMMIT (test builds only). Dropping it releases
    /// the commit.
    #[derive(Debug)]
    pub struct CommitHold {
        reached: oneshot::Receiver<GlobalPosition>,
        release: oneshot::Sender<()>,
    }

    impl CommitHold {
        /// Waits until a group commit has inserted its events and stopped; returns the last
        /// position it took. `None` if the store stopped first.
        pub async fn reached(&mut self) -> Option<GlobalPosition> {
            (&mut self.reached).await.ok()
        }

        /// Lets the held commit go on to COMMIT.
        pub fn release(self) {
            let _ = self.release.send(());
        }
    }
}
