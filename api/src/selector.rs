//! Label and field selectors, with the Kubernetes syntax and error wording.
//!
//! Label selectors (`?labelSelector=`) accept `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x)`, `a` (exists), `!a` (does not exist), `a>1`, `a<1`, comma-separated.
//! Field selectors (`?fieldSelector=`) accept `a=b`, `a==b`, `a!=b`, comma-separated, with
//! `\,`, `\=` and `\\` escapes in values.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::error::ApiError;

/// A selector that does not parse or does not validate; the message is worded like the
/// Kubernetes apiserver's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

impl SelectorError {
    /// The 400 BadRequest the apiserver answers for a bad `labelSelector`/`fieldSelector`.
    pub fn to_api_error(&self) -> ApiError {
        ApiError::BadRequest(self.0.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Validation (k8s.io/apimachinery/pkg/util/validation wording).
// ---------------------------------------------------------------------------------------

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

/// Kubernetes `RegexError` (including its famous double spaces).
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = String::from(msg);
    if examples.is_empty() {
        out.push_str(&format!(" (regex used for validation is '{fmt}')"));
        return out;
    }
    out.push_str(" (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain_syntax(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(l)) => {
                    (f.is_ascii_lowercase() || f.is_ascii_digit())
                        && (l.is_ascii_lowercase() || l.is_ascii_digit())
                        && b.iter()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                }
                _ => false,
            }
        })
}

/// Kubernetes `IsQualifiedName`: the error list (empty when valid).
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push(format!("prefix part {}", max_len_error(253)));
                }
                if !is_dns1123_subdomain_syntax(prefix) {
                    errs.push(format!(
                        "prefix part {}",
                        regex_error(
                            DNS1123_SUBDOMAIN_ERR,
                            DNS1123_SUBDOMAIN_FMT,
                            &["example.com"]
                        )
                    ));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Kubernetes `IsValidLabelValue`: the error list (empty when valid).
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `field.Invalid(path, value, detail)` rendered as Go does.
fn invalid(path: &str, value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: \"{value}\": {detail}")
}

/// `field.Invalid` for a list value (`[]string` renders as `[]string{"a", "b"}`).
fn invalid_list(path: &str, values: &[String], detail: &str) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        "{path}: Invalid value: []string{{{}}}: {detail}",
        quoted.join(", ")
    )
}

/// `utilerrors.Aggregate` rendering.
fn aggregate(errs: Vec<String>) -> Result<(), SelectorError> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(SelectorError(errs.into_iter().next().unwrap_or_default())),
        _ => Err(SelectorError(format!("[{}]", errs.join(", ")))),
    }
}

// ---------------------------------------------------------------------------------------
// Label selectors.
// ---------------------------------------------------------------------------------------

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// `key=value`.
    Equals,
    /// `key==value`.
    DoubleEquals,
    /// `key!=value`.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>5` (integer comparison).
    GreaterThan,
    /// `key<5` (integer comparison).
    LessThan,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values, sorted and deduplicated (empty for `Exists`/`DoesNotExist`).
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds and validates a requirement (Kubernetes `labels.NewRequirement`); `path` is the
    /// field path prefix used in error messages (empty for query parameters).
    pub fn new(
        key: &str,
        operator: Operator,
        values: Vec<String>,
        path: &str,
    ) -> Result<Requirement, SelectorError> {
        let child = |c: &str| {
            if path.is_empty() {
                c.to_string()
            } else {
                format!("{path}.{c}")
            }
        };
        let mut errs = Vec::new();
        let key_errs = qualified_name_errors(key);
        if !key_errs.is_empty() {
            errs.push(invalid(&child("key"), key, &key_errs.join("; ")));
        }
        let values_path = child("values");
        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(invalid_list(
                        &values_path,
                        &values,
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(invalid_list(
                        &values_path,
                        &values,
                        "exact-match compatibility requires one single value",
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(invalid_list(
                        &values_path,
                        &values,
                        "values set must be empty for exists and does not exist",
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(invalid_list(
                        &values_path,
                        &values,
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("{values_path}[{i}]"),
                            v,
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let v_errs = label_value_errors(v);
            if !v_errs.is_empty() {
                errs.push(invalid(
                    &format!("{values_path}[{i}][{key}]"),
                    v,
                    &v_errs.join("; "),
                ));
            }
        }
        aggregate(errs)?;
        let values: BTreeSet<String> = values.into_iter().collect();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values: values.into_iter().collect(),
        })
    }

    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                got.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => got.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    got.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={first}", self.key),
            Operator::DoubleEquals => write!(f, "{}=={first}", self.key),
            Operator::NotEquals => write!(f, "{}!={first}", self.key),
            Operator::GreaterThan => write!(f, "{}>{first}", self.key),
            Operator::LessThan => write!(f, "{}<{first}", self.key),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
        }
    }
}

/// A label selector: the AND of its requirements; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Ident,
    DoesNotExist,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    In,
    NotIn,
    OpenPar,
    ClosedPar,
    Comma,
    End,
    Error,
}

/// The Kubernetes label selector lexer.
fn lex(input: &str) -> Vec<(Tok, String)> {
    fn special(c: char) -> bool {
        matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
    }
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r' | '\n') {
            i += 1;
        }
        if i >= chars.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        let c = chars[i];
        if special(c) {
            // Longest match among the operators.
            let mut buf = String::new();
            let mut best: Option<(Tok, String)> = None;
            let mut j = i;
            while j < chars.len() && special(chars[j]) {
                buf.push(chars[j]);
                let tok = match buf.as_str() {
                    "!" => Some(Tok::DoesNotExist),
                    "!=" => Some(Tok::NotEquals),
                    "=" => Some(Tok::Equals),
                    "==" => Some(Tok::DoubleEquals),
                    ">" => Some(Tok::GreaterThan),
                    "<" => Some(Tok::LessThan),
                    "(" => Some(Tok::OpenPar),
                    ")" => Some(Tok::ClosedPar),
                    "," => Some(Tok::Comma),
                    _ => None,
                };
                match tok {
                    Some(t) => best = Some((t, buf.clone())),
                    None => break,
                }
                j += 1;
            }
            match best {
                Some((t, s)) => {
                    i += s.chars().count();
                    out.push((t, s));
                }
                None => {
                    out.push((Tok::Error, format!("error expected: keyword found '{buf}'")));
                    out.push((Tok::End, String::new()));
                    return out;
                }
            }
        } else {
            let mut s = String::new();
            while i < chars.len() && !special(chars[i]) && !chars[i].is_whitespace() {
                s.push(chars[i]);
                i += 1;
            }
            let tok = match s.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            };
            out.push((tok, s));
        }
    }
}

/// Parsing context: in `Values`, the keywords `in`/`notin` are plain identifiers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    toks: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    fn peek(&self, ctx: Ctx) -> (Tok, String) {
        let (t, s) = self
            .toks
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        if ctx == Ctx::Values && matches!(t, Tok::In | Tok::NotIn) {
            (Tok::Ident, s)
        } else {
            (t, s)
        }
    }

    fn next(&mut self, ctx: Ctx) -> (Tok, String) {
        let r = self.peek(ctx);
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        r
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.peek(Ctx::Values);
            match tok {
                Tok::Ident | Tok::DoesNotExist => {
                    let r = self.requirement().map_err(|e| {
                        SelectorError(format!("unable to parse requirement: {}", e.0))
                    })?;
                    reqs.push(r);
                    let (t, l) = self.next(Ctx::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.peek(Ctx::Values);
                            if t2 != Tok::Ident && t2 != Tok::DoesNotExist {
                                return Err(SelectorError(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut op = None;
        let (mut tok, mut lit) = self.next(Ctx::Values);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.next(Ctx::Values);
        }
        if tok != Tok::Ident {
            return Err(SelectorError(format!(
                "found '{lit}', expected: identifier"
            )));
        }
        let key = lit;
        let key_errs = qualified_name_errors(&key);
        if !key_errs.is_empty() {
            return Err(SelectorError(invalid("<nil>", &key, &key_errs.join("; "))));
        }
        let (la, _) = self.peek(Ctx::Values);
        if matches!(la, Tok::End | Tok::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        if let Some(op) = op {
            return Requirement::new(&key, op, Vec::new(), "");
        }
        let (tok, lit) = self.next(Ctx::KeyAndOperator);
        let op = match tok {
            Tok::In => Operator::In,
            Tok::NotIn => Operator::NotIn,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::NotEquals => Operator::NotEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            _ => {
                return Err(SelectorError(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )))
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.values()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, op, values.into_iter().collect(), "")
    }

    fn values(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, lit) = self.next(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(SelectorError(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.peek(Ctx::Values);
        match tok {
            Tok::Ident | Tok::Comma => {
                let s = self.identifiers()?;
                let (t, _) = self.next(Ctx::Values);
                if t != Tok::ClosedPar {
                    return Err(SelectorError(format!("found '{lit}', expected: ')'")));
                }
                Ok(s)
            }
            Tok::ClosedPar => {
                self.next(Ctx::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(SelectorError(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn identifiers(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut s = BTreeSet::new();
        loop {
            let (tok, lit) = self.next(Ctx::Values);
            match tok {
                Tok::Ident => {
                    s.insert(lit);
                    let (t2, l2) = self.peek(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(s),
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l2}', expected: ',' or ')'"
                            )))
                        }
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        s.insert(String::new());
                    }
                    let (t2, _) = self.peek(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        s.insert(String::new());
                        return Ok(s);
                    }
                    if t2 == Tok::Comma {
                        self.next(Ctx::Values);
                        s.insert(String::new());
                    }
                }
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )))
                }
            }
        }
    }

    fn exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, _) = self.peek(Ctx::Values);
        if matches!(tok, Tok::End | Tok::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (tok, lit) = self.next(Ctx::Values);
        if tok == Tok::Ident {
            return Ok(BTreeSet::from([lit]));
        }
        Err(SelectorError(format!(
            "found '{lit}', expected: identifier"
        )))
    }
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax (Kubernetes `labels.Parse`).
    pub fn parse(input: &str) -> Result<LabelSelector, SelectorError> {
        let mut p = Parser {
            toks: lex(input),
            pos: 0,
        };
        let mut requirements = p.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// A selector requiring `key=value` for every entry of `map` (empty map: everything).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in map {
            requirements.push(Requirement::new(k, Operator::Equals, vec![v.clone()], "")?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// From a Kubernetes `LabelSelector` object (`{matchLabels, matchExpressions}`) or a plain
    /// `{key: value}` map (Tugboat's selectors). `null` selects everything.
    pub fn from_k8s(value: &Value) -> Result<LabelSelector, SelectorError> {
        let obj = match value {
            Value::Null => return Ok(LabelSelector::default()),
            Value::Object(o) => o,
            other => {
                return Err(SelectorError(format!(
                    "invalid label selector: expected an object, got {other}"
                )))
            }
        };
        let structured = obj
            .get("matchLabels")
            .is_some_and(|v| v.is_object() || v.is_null())
            || obj
                .get("matchExpressions")
                .is_some_and(|v| v.is_array() || v.is_null());
        if !structured {
            let mut map = BTreeMap::new();
            for (k, v) in obj {
                let Value::String(s) = v else {
                    return Err(SelectorError(format!(
                        "invalid label selector: value of {k:?} must be a string"
                    )));
                };
                map.insert(k.clone(), s.clone());
            }
            return LabelSelector::from_map(&map);
        }
        let mut requirements = Vec::new();
        if let Some(Value::Object(ml)) = obj.get("matchLabels") {
            for (k, v) in ml {
                let Value::String(s) = v else {
                    return Err(SelectorError(format!(
                        "invalid label selector: matchLabels[{k}] must be a string"
                    )));
                };
                requirements.push(Requirement::new(k, Operator::Equals, vec![s.clone()], "")?);
            }
        }
        if let Some(Value::Array(exprs)) = obj.get("matchExpressions") {
            for expr in exprs {
                let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
                let op_str = expr.get("operator").and_then(Value::as_str).unwrap_or("");
                let op = match op_str {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    other => {
                        return Err(SelectorError(format!(
                            "\"{other}\" is not a valid label selector operator"
                        )))
                    }
                };
                let mut values = Vec::new();
                match expr.get("values") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(vs)) => {
                        for v in vs {
                            let Value::String(s) = v else {
                                return Err(SelectorError(format!(
                                    "invalid label selector: values of {key:?} must be strings"
                                )));
                            };
                            values.push(s.clone());
                        }
                    }
                    Some(_) => {
                        return Err(SelectorError(format!(
                            "invalid label selector: values of {key:?} must be a list"
                        )))
                    }
                }
                requirements.push(Requirement::new(key, op, values, "")?);
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Whether this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the labels of `object` (`metadata.labels`; non-string values ignored) match.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels = object_labels(object);
        self.matches(&labels)
    }

    /// Whether a `metadata.labels` value (a JSON map; `null` or absent is no labels) matches.
    pub fn matches_labels_value(&self, labels: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let map: BTreeMap<String, String> = labels
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&map)
    }
}

/// The `metadata.labels` of an object as a map (non-string values are skipped).
pub fn object_labels(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl fmt::Display for LabelSelector {
    /// The canonical form: requirements sorted by key, comma-separated (`app=my-app`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Field selectors.
// ---------------------------------------------------------------------------------------

/// A field selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `field=value`.
    Equals,
    /// `field==value`.
    DoubleEquals,
    /// `field!=value`.
    NotEquals,
}

/// One term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field name (`metadata.name`, `spec.nodeName`, …).
    pub field: String,
    /// Operator.
    pub operator: FieldOperator,
    /// Unescaped value.
    pub value: String,
}

impl FieldRequirement {
    /// Whether the field value (missing fields read as `""`, as in Kubernetes) satisfies it.
    pub fn matches(&self, actual: Option<&str>) -> bool {
        let actual = actual.unwrap_or("");
        match self.operator {
            FieldOperator::Equals | FieldOperator::DoubleEquals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            FieldOperator::Equals => "=",
            FieldOperator::DoubleEquals => "==",
            FieldOperator::NotEquals => "!=",
        };
        write!(f, "{}{op}{}", self.field, escape_field_value(&self.value))
    }
}

/// A field selector: the AND of its terms; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Escapes `\`, `,` and `=` in a field selector value.
pub fn escape_field_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape_field_value(v: &str) -> Result<String, SelectorError> {
    if !v.contains(['\\', '=', ',']) {
        return Ok(v.to_string());
    }
    let mut out = String::with_capacity(v.len());
    let mut escaped = false;
    for c in v.chars() {
        if escaped {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(SelectorError(format!(
                        "invalid field selector: invalid escape sequence: \\{other}"
                    )))
                }
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )))
            }
            other => out.push(other),
        }
    }
    if escaped {
        return Err(SelectorError(
            "invalid field selector: invalid escape sequence: \\".to_string(),
        ));
    }
    Ok(out)
}

/// Splits on commas that are not escaped by a backslash.
fn split_terms(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    terms.push(cur);
    terms
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax (Kubernetes `fields.ParseSelector`).
    pub fn parse(input: &str) -> Result<FieldSelector, SelectorError> {
        let mut parts = split_terms(input);
        parts.sort();
        let mut requirements = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let cant = || {
                SelectorError(format!(
                    "invalid selector: '{input}'; can't understand '{part}'"
                ))
            };
            let mut found = None;
            for (i, _) in part.char_indices() {
                let rest = &part[i..];
                let op = if rest.starts_with("!=") {
                    Some((FieldOperator::NotEquals, 2))
                } else if rest.starts_with("==") {
                    Some((FieldOperator::DoubleEquals, 2))
                } else if rest.starts_with('=') {
                    Some((FieldOperator::Equals, 1))
                } else {
                    None
                };
                if let Some((op, len)) = op {
                    found = Some((i, op, len));
                    break;
                }
            }
            let (i, operator, len) = found.ok_or_else(cant)?;
            let value = unescape_field_value(&part[i + len..])?;
            requirements.push(FieldRequirement {
                field: part[..i].to_string(),
                operator,
                value,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The terms (sorted as Kubernetes sorts them), for the server to check field names.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Whether an object matches, `get` returning the value of a field name.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(get(&r.field).as_deref()))
    }

    /// `X` when the selector requires `metadata.name=X` (or `==`), for single-object fast paths.
    pub fn exact_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| {
                r.field == "metadata.name"
                    && matches!(
                        r.operator,
                        FieldOperator::Equals | FieldOperator::DoubleEquals
                    )
            })
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(s: &str) -> String {
        LabelSelector::parse(s).expect_err(s).0
    }

    #[test]
    fn label_equality_forms() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for s in ["app=web", "app==web", " app = web ", "app=web,tier=front"] {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        assert!(!LabelSelector::parse("app=db").unwrap().matches(&l));
        assert!(LabelSelector::parse("app!=db").unwrap().matches(&l));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&l));
        // != matches objects without the label.
        assert!(LabelSelector::parse("zone!=a").unwrap().matches(&l));
        // Empty value.
        let sel = LabelSelector::parse("app=").unwrap();
        assert!(sel.matches(&labels(&[("app", "")])));
        assert!(!sel.matches(&l));
    }

    #[test]
    fn label_set_forms() {
        let l = labels(&[("env", "prod")]);
        let sel = LabelSelector::parse("env in (prod, staging)").unwrap();
        assert!(sel.matches(&l));
        assert_eq!(sel.to_string(), "env in (prod,staging)");
        assert!(!LabelSelector::parse("env in (dev)").unwrap().matches(&l));
        assert!(LabelSelector::parse("env notin (dev)").unwrap().matches(&l));
        assert!(LabelSelector::parse("x notin (dev)").unwrap().matches(&l));
        assert!(!LabelSelector::parse("env notin (prod)")
            .unwrap()
            .matches(&l));
        // `in` is a plain identifier in value position.
        let sel = LabelSelector::parse("env in (in,notin)").unwrap();
        assert_eq!(sel.requirements()[0].values, vec!["in", "notin"]);
        // `()` and `(,)` mean the empty value.
        assert_eq!(
            LabelSelector::parse("a in ()").unwrap().requirements()[0].values,
            vec![""]
        );
        assert_eq!(
            LabelSelector::parse("a in (,b)").unwrap().requirements()[0].values,
            vec!["", "b"]
        );
    }

    #[test]
    fn label_existence_and_comparison() {
        let l = labels(&[("gpu", "4")]);
        assert!(LabelSelector::parse("gpu").unwrap().matches(&l));
        assert!(!LabelSelector::parse("!gpu").unwrap().matches(&l));
        assert!(LabelSelector::parse("!ssd").unwrap().matches(&l));
        assert!(LabelSelector::parse("gpu, !ssd").unwrap().matches(&l));
        assert!(LabelSelector::parse("gpu>3").unwrap().matches(&l));
        assert!(!LabelSelector::parse("gpu<3").unwrap().matches(&l));
        assert!(!LabelSelector::parse("ssd>0").unwrap().matches(&l));
        assert!(LabelSelector::parse("example.com/role=x").is_ok());
    }

    #[test]
    fn label_empty_and_canonical() {
        let sel = LabelSelector::parse("").unwrap();
        assert!(sel.is_empty());
        assert!(sel.matches(&BTreeMap::new()));
        assert!(LabelSelector::parse("  ").unwrap().is_empty());
        let sel = LabelSelector::parse("tier=a,!b,app==x,c,d notin (z,y)").unwrap();
        assert_eq!(sel.to_string(), "app==x,!b,c,d notin (y,z),tier=a");
        assert_eq!(
            LabelSelector::parse(&sel.to_string()).unwrap().to_string(),
            sel.to_string()
        );
    }

    #[test]
    fn label_errors() {
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(
            err("=b"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (b c)"),
            "unable to parse requirement: found 'c', expected: ',' or ')'"
        );
        assert_eq!(
            err("a=(b)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            err("!=a"),
            "found '!=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("!!a"),
            "unable to parse requirement: found '!', expected: identifier"
        );
        assert!(err("-a=b").starts_with(
            "unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        ));
        assert!(err("Bad_Prefix/a=b").contains("prefix part a lowercase RFC 1123 subdomain"));
        assert!(err("a/b/c").contains("a qualified name must consist of"));
        assert!(err(&format!("{}=x", "k".repeat(64)))
            .contains("name part must be no more than 63 characters"));
        assert_eq!(
            err("a=-b"),
            "unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        assert!(
            err(&format!("a={}", "v".repeat(64))).contains("must be no more than 63 characters")
        );
        assert_eq!(
            err("a>b"),
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        assert!(LabelSelector::parse("a=>b").is_err());
    }

    #[test]
    fn label_from_map_and_k8s() {
        let map = labels(&[("app", "my-app")]);
        let sel = LabelSelector::from_map(&map).unwrap();
        assert_eq!(sel.to_string(), "app=my-app");
        let sel = LabelSelector::from_k8s(&json!({"app": "my-app"})).unwrap();
        assert_eq!(sel.to_string(), "app=my-app");
        let sel = LabelSelector::from_k8s(&json!({
            "matchLabels": {"app": "x"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(sel.to_string(), "app=x,!gone,tier in (a,b)");
        assert!(sel.matches(&labels(&[("app", "x"), ("tier", "b")])));
        assert!(!sel.matches(&labels(&[("app", "x"), ("tier", "b"), ("gone", "")])));
        assert_eq!(
            LabelSelector::from_k8s(
                &json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})
            )
            .unwrap_err()
            .0,
            "\"Gt\" is not a valid label selector operator"
        );
        assert_eq!(
            LabelSelector::from_k8s(&json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}))
                .unwrap_err()
                .0,
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
        );
        assert!(LabelSelector::from_k8s(&json!({"a": 1})).is_err());
        assert!(LabelSelector::from_k8s(&json!({})).unwrap().is_empty());
        assert!(LabelSelector::from_k8s(&Value::Null).unwrap().is_empty());
    }

    #[test]
    fn k8s_selector_match_labels_and_expressions() {
        // Moved from the former auth::selector (ClusterRole aggregation).
        let s = LabelSelector::from_k8s(&json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "In", "values": ["x", "y"]},
                {"key": "c", "operator": "DoesNotExist"},
                {"key": "d", "operator": "NotIn", "values": ["bad"]},
            ]
        }))
        .unwrap();
        assert!(s.matches(&labels(&[("a", "1"), ("b", "y")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "z")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "x"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "x"), ("d", "bad")])));
        assert!(!s.matches(&labels(&[("a", "2"), ("b", "x")])));
        assert!(LabelSelector::from_k8s(
            &json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})
        )
        .is_err());
        assert!(
            LabelSelector::from_k8s(&json!({"matchExpressions": [{"operator": "Exists"}]}))
                .is_err()
        );
    }

    #[test]
    fn label_matches_object() {
        let sel = LabelSelector::parse("app=web").unwrap();
        assert!(sel.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!sel.matches_object(&json!({"metadata": {}})));
        assert!(sel.matches_labels_value(&json!({"app": "web"})));
        assert!(!sel.matches_labels_value(&Value::Null));
        assert!(LabelSelector::default().matches_object(&json!({})));
    }

    #[test]
    fn field_selectors() {
        let sel = FieldSelector::parse("metadata.name=x,spec.nodeName!=n1").unwrap();
        assert_eq!(sel.exact_name(), Some("x"));
        assert_eq!(sel.requirements().len(), 2);
        let get = |f: &str| match f {
            "metadata.name" => Some("x".to_string()),
            "spec.nodeName" => Some("n2".to_string()),
            _ => None,
        };
        assert!(sel.matches(get));
        assert!(!FieldSelector::parse("spec.nodeName==n2")
            .unwrap()
            .matches(|_| Some("n1".into())));
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(|_| None));
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert_eq!(
            FieldSelector::parse("metadata.namespace!=default")
                .unwrap()
                .exact_name(),
            None
        );
        let sel = FieldSelector::parse(r"a=x\,y\=z").unwrap();
        assert_eq!(sel.requirements()[0].value, "x,y=z");
        assert_eq!(sel.to_string(), r"a=x\,y\=z");
    }

    #[test]
    fn field_selector_errors() {
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().0,
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            FieldSelector::parse("a=b,c in (d)").unwrap_err().0,
            "invalid selector: 'a=b,c in (d)'; can't understand 'c in (d)'"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\x").unwrap_err().0,
            "invalid field selector: invalid escape sequence: \\x"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().0,
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            FieldSelector::parse("a").unwrap_err().to_api_error().code(),
            400
        );
    }
}
