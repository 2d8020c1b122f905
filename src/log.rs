//! Log lines for long-running commands: one line per action and per reconcile, as text for
//! people or JSON for log shippers. Lines go to stderr; secrets never reach here (messages
//! are built from plans and diagnostics, which hold none).

use std::io::Write;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Logger {
    pub format: LogFormat,
}

impl Logger {
    pub fn info(&self, event: &str, msg: &str, fields: &[(&str, String)]) {
        self.write("info", event, msg, fields);
    }
    pub fn warn(&self, event: &str, msg: &str, fields: &[(&str, String)]) {
        self.write("warn", event, msg, fields);
    }
    pub fn error(&self, event: &str, msg: &str, fields: &[(&str, String)]) {
        self.write("error", event, msg, fields);
    }

    fn write(&self, level: &str, event: &str, msg: &str, fields: &[(&str, String)]) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let line = match self.format {
            LogFormat::Json => {
                let mut v =
                    serde_json::json!({ "ts": ts, "level": level, "event": event, "msg": msg });
                for (k, val) in fields {
                    v[*k] = val.clone().into();
                }
                v.to_string()
            }
            LogFormat::Text => {
                let mut s = format!("{ts} {level:<5} {msg}");
                for (k, val) in fields {
                    if val.contains(char::is_whitespace) || val.is_empty() {
                        s.push_str(&format!(" {k}={val:?}"));
                    } else {
                        s.push_str(&format!(" {k}={val}"));
                    }
                }
                s
            }
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}
