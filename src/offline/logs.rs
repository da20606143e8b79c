//! The warnings a case's run logs, caught to be shown with its result: why a hook failed is
//! only told in the server's log, and offline runs write none.

use std::{
    fmt::{self, Write as _},
    sync::{Arc, Mutex, PoisonError},
};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    Layer,
    layer::{Context, SubscriberExt},
};

/// Warnings and errors logged on this thread while [`Caught::during`] runs, one line each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caught {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Caught {
    /// Runs `f` with this thread's events caught (cases run on a current-thread runtime, so
    /// every step's events are on this thread); returns its result and the lines.
    pub fn during<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let caught = Self::default();
        let subscriber = tracing_subscriber::registry().with(caught.clone());
        let result = tracing::subscriber::with_default(subscriber, f);
        let lines =
            std::mem::take(&mut *caught.lines.lock().unwrap_or_else(PoisonError::into_inner));
        (result, lines)
    }
}

impl<S: Subscriber> Layer<S> for Caught {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // More verbose levels compare greater.
        if *event.metadata().level() > Level::WARN {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line.finish());
    }
}

/// `<message> name=value…`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn finish(self) -> String {
        format!("{}{}", self.message, self.fields)
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_caught_with_their_fields_and_info_is_not() {
        let ((), lines) = Caught::during(|| {
            tracing::info!("not shown");
            tracing::warn!(reason = "step_error", code = 3, "hook failed");
        });
        assert_eq!(lines, [r#"hook failed reason="step_error" code=3"#]);
    }
}
