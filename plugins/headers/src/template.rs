//! Header values with placeholders: `{request.id}`, `{route}`, `{request.header.NAME}`,
//! `{request.path}`, `{request.method}`, `{request.host}`; `{{` and `}}` stand for `{` and `}`.

use std::fmt;

/// A placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `{request.id}`: the request's id.
    RequestId,
    /// `{route}`: the matched route's name.
    Route,
    /// `{request.path}`: the path with its query, as the client sent it.
    Path,
    /// `{request.method}`.
    Method,
    /// `{request.host}`: the authority.
    Host,
    /// `{request.header.NAME}`: the first value of a request header (lower-case name).
    Header(String),
}

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text as is.
    Text(String),
    /// A value filled in per request.
    Var(Var),
}

/// A parsed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn var(name: &str) -> Result<Var, TemplateError> {
    Ok(match name {
        "request.id" => Var::RequestId,
        "route" => Var::Route,
        "request.path" => Var::Path,
        "request.method" => Var::Method,
        "request.host" => Var::Host,
        _ => match name.strip_prefix("request.header.") {
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Var::Header(h.to_ascii_lowercase())
            }
            _ => {
                return Err(TemplateError(format!(
                "unknown placeholder {{{name}}}: use {{request.id}}, {{route}}, {{request.path}}, \
                     {{request.method}}, {{request.host}} or {{request.header.NAME}}"
            )))
            }
        },
    })
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(TemplateError(format!(
                    "a lone '}}' in {text:?} (write '}}}}')"
                )));
            } else {
                let end = tail
                    .find('}')
                    .ok_or_else(|| TemplateError(format!("an unclosed '{{' in {text:?}")))?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Var(var(&tail[1..end])?));
                rest = &tail[end + 1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template(parts))
    }

    /// Whether the value has no placeholder.
    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The value, with `lookup` filling each placeholder; `None` if a placeholder has no
    /// value (the header is then left alone).
    pub fn render(&self, mut lookup: impl FnMut(&Var) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&lookup(v)?),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(v: &Var) -> Option<String> {
        match v {
            Var::RequestId => Some("id-1".into()),
            Var::Header(h) if h == "x-user" => Some("ann".into()),
            _ => None,
        }
    }

    #[test]
    fn placeholders_and_escapes() {
        let t = Template::parse("req={request.id} user={request.header.X-User} {{x}}").unwrap();
        assert_eq!(t.render(fill).as_deref(), Some("req=id-1 user=ann {x}"));
        assert!(!t.is_literal());
        assert!(Template::parse("plain").unwrap().is_literal());
        assert_eq!(
            Template::parse("").unwrap().render(fill).as_deref(),
            Some("")
        );
    }

    #[test]
    fn a_missing_value_renders_nothing() {
        let t = Template::parse("{route}").unwrap();
        assert_eq!(t.render(fill), None);
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("{nope}")
            .unwrap_err()
            .0
            .contains("unknown placeholder {nope}"));
        assert!(Template::parse("{request.id")
            .unwrap_err()
            .0
            .contains("unclosed"));
        assert!(Template::parse("a}b").unwrap_err().0.contains("lone"));
        assert!(Template::parse("{request.header.}").is_err());
        assert!(Template::parse("{request.header.a b}").is_err());
    }
}
