//! Secret references in a plugin's `config` and `vm_config`: `${env:NAME}` and `${file:PATH}`,
//! replaced when the config is loaded, so that keys and digests live in the environment or in
//! files (a Kubernetes Secret mounted as a directory) rather than in the config file.
//!
//! - A reference may be a whole string value or part of one (`"Bearer ${env:TOKEN}"`); in a map
//!   or list form `config`, every string value at any depth is looked at (keys are not). The
//!   result is always a string: a file holding JSON does not become a map.
//! - `${file:PATH}` reads the file (relative paths against the config file's directory), which
//!   must be UTF-8 and at most [`MAX_FILE_BYTES`]; one trailing line break (`\n` or `\r\n`) is
//!   dropped, as files written by `echo` or editors end with one. The file is watched: when it
//!   changes, the config reloads as when a plugin's `.wasm` changes.
//! - `${env:NAME}` reads an environment variable of the process (fixed while it runs).
//! - `$${` is a literal `${`. Any other `${…}` is an error, as is a `${` without its `}`.
//!
//! The file structs keep the references as written: `/config`, `/plugins` and the logs show the
//! reference, never the value. A missing variable or file is a config error naming the field
//! and the reference, so a reload that would lose a secret is refused and the running config
//! keeps serving.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::ConfigError;

/// The largest file a `${file:…}` reference may read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What one plugin's references named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// The references, as written between `${` and `}` (`env:NAME`, `file:PATH`), in order of
    /// appearance, without repeats.
    pub references: Vec<String>,
    /// The files read (resolved paths), to watch.
    pub files: Vec<PathBuf>,
}

impl Secrets {
    fn note(&mut self, reference: &str, file: Option<PathBuf>) {
        if !self.references.iter().any(|r| r == reference) {
            self.references.push(reference.to_string());
        }
        if let Some(f) = file {
            if !self.files.contains(&f) {
                self.files.push(f);
            }
        }
    }
}

/// `value` (written at `field`) with every reference replaced. Each problem is added to
/// `errors` (naming the field where it is, and the reference; never a secret's value) and its
/// string is left as written.
pub fn resolve(
    value: &Value,
    field: &str,
    base: &Path,
    secrets: &mut Secrets,
    errors: &mut Vec<ConfigError>,
) -> Value {
    match value {
        Value::String(s) => match substitute(s, base, secrets) {
            Ok(Some(out)) => Value::String(out),
            Ok(None) => value.clone(),
            Err(message) => {
                errors.push(ConfigError::invalid(field, message));
                value.clone()
            }
        },
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| resolve(v, &format!("{field}[{i}]"), base, secrets, errors))
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.iter()
                .map(|(k, v)| {
                    let name = match k {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .map(|t| t.trim_end().to_string())
                            .unwrap_or_default(),
                    };
                    let inner = resolve(v, &format!("{field}.{name}"), base, secrets, errors);
                    (k.clone(), inner)
                })
                .collect(),
        ),
        Value::Tagged(t) => Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
            tag: t.tag.clone(),
            value: resolve(&t.value, field, base, secrets, errors),
        })),
        Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
    }
}

/// The string with its references replaced, or `None` when it has neither a reference nor an
/// escape (the common case: nothing is copied).
fn substitute(text: &str, base: &Path, secrets: &mut Secrets) -> Result<Option<String>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            // `$${`: a literal `${`.
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "{:?} has a `${{` without its `}}`; write `$${{` for a literal `${{`",
                clip(&rest[at..])
            ));
        };
        let reference = &after[..end];
        out.push_str(&lookup(reference, base, secrets)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The value of one reference (`env:NAME` or `file:PATH`).
fn lookup(reference: &str, base: &Path, secrets: &mut Secrets) -> Result<String, String> {
    let shown = format!("${{{reference}}}");
    let (kind, arg) = reference.split_once(':').unwrap_or((reference, ""));
    match kind {
        "env" => {
            if arg.is_empty()
                || arg.as_bytes()[0].is_ascii_digit()
                || !arg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!(
                    "{shown}: {arg:?} is not an environment variable name (letters, digits, _)"
                ));
            }
            secrets.note(reference, None);
            match std::env::var(arg) {
                Ok(v) => Ok(v),
                Err(std::env::VarError::NotPresent) => Err(format!(
                    "{shown}: the environment variable {arg} is not set"
                )),
                Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                    "{shown}: the environment variable {arg} is not UTF-8"
                )),
            }
        }
        "file" => {
            if arg.is_empty() {
                return Err(format!("{shown}: no file named"));
            }
            let path = base.join(arg);
            secrets.note(reference, Some(path.clone()));
            read_file(&path).map_err(|m| format!("{shown}: {m}"))
        }
        _ => Err(format!(
            "{:?} is not a reference: use ${{env:NAME}} or ${{file:PATH}}, and $${{ for a \
             literal ${{",
            clip(&shown)
        )),
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown} has {} bytes, more than the {MAX_FILE_BYTES} a reference may read",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

/// At most 60 characters of what was written, for a message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, base: &Path) -> (Value, Secrets, Vec<ConfigError>) {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut secrets = Secrets::default();
        let mut errors = Vec::new();
        let out = resolve(&v, "plugins.p.config", base, &mut secrets, &mut errors);
        (out, secrets, errors)
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluice-secrets-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn whole_values_parts_and_nested_values_are_replaced() {
        let d = dir();
        std::fs::write(d.join("key"), "s3cret\n").unwrap();
        std::fs::write(d.join("crlf"), "two\r\n").unwrap();
        std::env::set_var("SLUICE_SECRETS_TEST_A", "from-env");
        let (out, secrets, errors) = run(
            "a: ${file:key}\n\
             b: 'Bearer ${env:SLUICE_SECRETS_TEST_A}!'\n\
             c: [{ k: '${file:crlf}${file:key}' }, 7, true]\n\
             d: plain\n",
            &d,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let want: Value = serde_yaml::from_str(
            "a: s3cret\nb: 'Bearer from-env!'\nc: [{ k: twos3cret }, 7, true]\nd: plain\n",
        )
        .unwrap();
        assert_eq!(out, want);
        assert_eq!(
            secrets.references,
            ["file:key", "env:SLUICE_SECRETS_TEST_A", "file:crlf"]
        );
        assert_eq!(secrets.files, [d.join("key"), d.join("crlf")]);
    }

    #[test]
    fn a_doubled_dollar_is_a_literal_and_keeps_the_rest_as_written() {
        let (out, secrets, errors) = run("'$${env:X} and $$ and $ {x} and $${'", Path::new("."));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out, Value::from("${env:X} and $$ and $ {x} and ${"));
        assert!(secrets.references.is_empty());
    }

    #[test]
    fn only_one_trailing_line_break_is_dropped() {
        let d = dir();
        std::fs::write(d.join("pem"), "line1\nline2\n\n").unwrap();
        let (out, _, errors) = run("${file:pem}", &d);
        assert!(errors.is_empty());
        assert_eq!(out, Value::from("line1\nline2\n"));
    }

    #[test]
    fn problems_name_the_field_and_the_reference_but_never_a_value() {
        let d = dir();
        std::fs::write(d.join("big"), vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        std::fs::write(d.join("bin"), [0xff, 0xfe]).unwrap();
        std::env::remove_var("SLUICE_SECRETS_TEST_MISSING");
        let (_, secrets, errors) = run(
            "a: ${env:SLUICE_SECRETS_TEST_MISSING}\n\
             b: [x, '${file:nope}']\n\
             c: ${file:big}\n\
             d: ${file:bin}\n\
             e: 'x ${vault:k} y'\n\
             f: 'abc ${env:OPEN'\n\
             g: ${env:1BAD}\n\
             h: ${file:}\n",
            &d,
        );
        let got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(got.len(), 8, "{got:#?}");
        assert_eq!(
            got[0],
            "plugins.p.config.a: ${env:SLUICE_SECRETS_TEST_MISSING}: the environment variable \
             SLUICE_SECRETS_TEST_MISSING is not set"
        );
        assert!(
            got[1].starts_with(&format!(
                "plugins.p.config.b[1]: ${{file:nope}}: cannot read {}: ",
                d.join("nope").display()
            )),
            "{}",
            got[1]
        );
        assert!(got[2].starts_with("plugins.p.config.c: ${file:big}: "));
        assert!(got[2].ends_with("more than the 1048576 a reference may read"));
        assert!(got[3].ends_with("is not UTF-8 text"), "{}", got[3]);
        assert!(got[4].starts_with("plugins.p.config.e: \"${vault:k}\" is not a reference"));
        assert!(got[5].starts_with("plugins.p.config.f: \"${env:OPEN\" has a `${` without"));
        assert!(got[6].contains("\"1BAD\" is not an environment variable name"));
        assert_eq!(got[7], "plugins.p.config.h: ${file:}: no file named");
        // Files named are watched even when missing, so that creating one reloads.
        assert!(secrets.files.contains(&d.join("nope")));
    }

    #[test]
    fn text_without_references_is_not_copied() {
        let mut s = Secrets::default();
        assert_eq!(substitute("no refs $ {}", Path::new("."), &mut s), Ok(None));
    }
}
