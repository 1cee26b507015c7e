//! The handler for `PUT .../alerts`: settings are checked and recorded as they are.

use crate::alerts::{check_configuration, ConfigureAlerts};
use crate::rejection::Rejection;

use super::{Ctx, Decision, Reply};

impl Ctx<'_> {
    /// Every accepted `PUT` is recorded, even one equal to the settings in force: it is an
    /// audit trail of who asked for what, and the alerts projector keeps a threshold's state
    /// across an unchanged setting, so a repeat notifies nobody.
    pub(super) fn configure_alerts(&self, c: &ConfigureAlerts) -> Result<Decision, Rejection> {
        let configured = check_configuration(c)?;
        Ok(Decision::new(
            vec![configured.into()],
            Reply::AlertsConfigured,
        ))
    }
}
