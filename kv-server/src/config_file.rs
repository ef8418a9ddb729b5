//! `--config-file`: any flag of the command line in a TOML file, keyed by its long name
//! (docs/operations.md#configuration-file).
//!
//! Precedence, from strongest: the flag on the command line, its environment variable
//! (`KV_<FLAG>`), the file, the built-in default. The file's values become the flags'
//! defaults before clap parses the command line, so clap's own order (command line, then
//! environment, then default) gives exactly that, and a value from the file is checked by the
//! same parser as one from the command line. A key that is no flag is an error naming it.

use crate::flags::Flags;
use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag naming the file, and its environment variable.
const FLAG: &str = "config-file";
const ENV: &str = "KV_CONFIG_FILE";

/// Why the flags could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("--config-file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not TOML, or a value is of a kind no flag takes.
    #[error("--config-file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or the line.
        reason: String,
    },
    /// The command line (or a value from the file) is wrong, or asks for help or the version.
    #[error("{0}")]
    Flags(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error and exits as clap does for its own errors: status 0 for --help and
    /// --version, 2 for bad usage.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Flags(error) => error.exit(),
            other => {
                eprintln!("kv-server: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `argv` (the program name first) into flags, with the values of the config file it
/// names (`--config-file` or `KV_CONFIG_FILE`) as defaults.
pub fn parse_flags<I, T>(argv: I) -> Result<Flags, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = Flags::command();
    let mut from_file = Vec::new();
    let path = named_file(&argv);
    if let Some(path) = &path {
        from_file = read(path)?;
        for (key, value) in &from_file {
            let id = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(key.as_str()) && key != FLAG)
                .map(|arg| arg.get_id().clone())
                .ok_or_else(|| unknown_key(path, key))?;
            command = command.mut_arg(id, |arg| arg.default_value(value).required(false));
        }
    }
    let parsed =
        command.try_get_matches_from(&argv).and_then(|matches| Flags::from_arg_matches(&matches));
    parsed.map_err(|error| match &path {
        Some(path) => blame_the_file(error, path, &from_file, &argv),
        None => error.into(),
    })
}

/// A value clap refused, reported as the file's when it came from the file (naming the file
/// and the key; clap alone names only the flag): the file gave that flag exactly that value,
/// and neither the command line nor the environment gave the flag.
fn blame_the_file(
    error: clap::Error,
    path: &Path,
    from_file: &[(String, String)],
    argv: &[OsString],
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    let (Some(flag), Some(value)) =
        (text(ContextKind::InvalidArg), text(ContextKind::InvalidValue))
    else {
        return error.into();
    };
    let named = |key: &str| flag == format!("--{key}") || flag.starts_with(&format!("--{key} "));
    let Some((key, _)) = from_file.iter().find(|(key, given)| named(key) && *given == value) else {
        return error.into();
    };
    if given_elsewhere(key, argv) {
        return error.into();
    }
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let reason = first.strip_prefix("error: ").unwrap_or(first);
    ConfigError::Invalid {
        path: path.to_path_buf(),
        reason: format!("{key} = {value:?}: {reason}"),
    }
}

/// Whether the flag `key` is on the command line or in its environment variable.
fn given_elsewhere(key: &str, argv: &[OsString]) -> bool {
    let on_command_line = argv.iter().any(|arg| {
        let arg = arg.to_string_lossy();
        arg == format!("--{key}") || arg.starts_with(&format!("--{key}="))
    });
    let command = Flags::command();
    let arg = command.get_arguments().find(|arg| arg.get_long() == Some(key));
    on_command_line
        || arg.and_then(clap::Arg::get_env).is_some_and(|var| std::env::var_os(var).is_some())
}

/// The file `--config-file` names on the command line, else `KV_CONFIG_FILE`. Looked for
/// before clap parses, since the file may hold flags clap requires.
fn named_file(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{FLAG}");
    let with_value = format!("--{FLAG}=");
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == flag {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix(&with_value) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(ENV).map(PathBuf::from)
}

fn unknown_key(path: &Path, key: &str) -> ConfigError {
    let reason = if key == FLAG {
        "a config file cannot name another one (config-file)".to_string()
    } else {
        format!(
            "unknown key {key:?}: the keys are the long names of kv-server's flags \
             (kv-server --help), such as data-dir"
        )
    };
    ConfigError::Invalid { path: path.to_path_buf(), reason }
}

/// The file's keys and their values as command-line text, in the file's order.
fn read(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { path: path.to_path_buf(), reason: e.to_string() })?;
    let invalid = |reason: String| ConfigError::Invalid { path: path.to_path_buf(), reason };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    table
        .into_iter()
        .map(|(key, value)| match as_flag_text(&value) {
            Some(text) => Ok((key, text)),
            None => Err(invalid(format!(
                "{key}: a {} is not a flag's value (give a string, number or boolean)",
                value.type_str()
            ))),
        })
        .collect()
}

/// A TOML value as a flag's text: strings, numbers and booleans as written; an array of
/// strings joined by commas (for lists such as initial-cluster).
fn as_flag_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        toml::Value::Array(items) => {
            let texts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
            texts.map(|texts| texts.join(","))
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &str = r#"
name = "n2"
initial-cluster = ["n1=127.0.0.1:7001", "n2=127.0.0.1:7002", "n3=127.0.0.1:7003"]
data-dir = "/tmp/from-the-file"
listen-peer-address = "127.0.0.1:7002"
listen-client-address = "127.0.0.1:8002"
peer-cert-file = "c.pem"
peer-key-file = "k.pem"
peer-trusted-ca-file = "ca.pem"
"#;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn parse(file: &tempfile::NamedTempFile, extra: &[&str]) -> Result<Flags, String> {
        let path = file.path().display().to_string();
        let argv = ["kv-server", "--config-file", &path].into_iter().chain(extra.iter().copied());
        parse_flags(argv).map_err(|e| e.to_string())
    }

    /// The command line beats the environment, which beats the file, which beats the
    /// built-in default. Only this test sets KV_SNAPSHOT_CATCHUP_ENTRIES.
    #[test]
    fn precedence_is_flag_then_environment_then_file_then_default() {
        let config = file(&format!(
            "{REQUIRED}\ntick-ms = 7\nelection-ticks = 5\nsnapshot-catchup-entries = 11\n"
        ));
        std::env::set_var("KV_SNAPSHOT_CATCHUP_ENTRIES", "13");
        let flags = parse(&config, &["--tick-ms=9"]);
        std::env::remove_var("KV_SNAPSHOT_CATCHUP_ENTRIES");
        let flags = flags.unwrap();
        assert_eq!(flags.tick_ms, 9, "the command line beats the file");
        assert_eq!(flags.snapshot_catchup_entries, 13, "the environment beats the file");
        assert_eq!(flags.election_ticks, 5, "the file beats the default");
        assert_eq!(flags.snapshot_entries, 100_000, "the default stays without the others");
        assert_eq!(flags.data_dir, PathBuf::from("/tmp/from-the-file"));
        let settings = flags.check().unwrap();
        assert_eq!(settings.members.len(), 3, "an array is a comma-separated list");
    }

    #[test]
    fn a_flag_missing_everywhere_is_still_required() {
        let config = file(&REQUIRED.replace("data-dir = \"/tmp/from-the-file\"\n", ""));
        let error = parse(&config, &[]).unwrap_err();
        assert!(error.contains("--data-dir"), "{error}");
        assert!(parse(&config, &["--data-dir=/tmp/y"]).is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let config = file(&format!("{REQUIRED}\ndata-dri = \"/x\"\n"));
        let error = parse(&config, &[]).unwrap_err();
        assert!(error.contains("unknown key \"data-dri\""), "{error}");
        let config = file(&format!("{REQUIRED}\nconfig-file = \"other.toml\"\n"));
        let error = parse(&config, &[]).unwrap_err();
        assert!(error.contains("cannot name another"), "{error}");
    }

    #[test]
    fn bad_values_and_bad_files_are_refused_naming_what_is_wrong() {
        let config = file(&format!("{REQUIRED}\ntick-ms = \"soon\"\n"));
        let error = parse(&config, &[]).unwrap_err();
        let path = config.path().display().to_string();
        assert!(error.contains(&path), "the error names the file: {error}");
        assert!(error.contains("tick-ms = \"soon\": invalid value"), "{error}");
        let error = parse(&config, &["--tick-ms", "later"]).unwrap_err();
        assert!(error.contains("'later'") && !error.contains(&path), "the flag's: {error}");
        let config = file(&format!("{REQUIRED}\n[tick-ms]\nvalue = 3\n"));
        let error = parse(&config, &[]).unwrap_err();
        assert!(error.contains("tick-ms: a table is not a flag's value"), "{error}");
        let config = file("name = \n");
        let error = parse(&config, &[]).unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        let argv = ["kv-server", "--config-file=/nonexistent/kv.toml"];
        let error = parse_flags(argv).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/kv.toml"), "{error}");
    }

    /// The example configuration of the repository (`config/`) stays valid: three nodes of
    /// one cluster.
    #[test]
    fn the_example_three_node_configuration_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/three-nodes");
        let mut clusters = Vec::new();
        for name in ["n1", "n2", "n3"] {
            let path = dir.join(format!("{name}.toml"));
            let argv = ["kv-server".into(), format!("--config-file={}", path.display())];
            let flags = parse_flags(argv).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let settings = flags.check().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(settings.flags.name, name);
            clusters.push(settings.members);
        }
        assert!(clusters.windows(2).all(|w| w[0] == w[1]), "one cluster: {clusters:?}");
    }
}
