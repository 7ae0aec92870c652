//! Header maps as plugins see them, and the few operations the host does on them.

/// A header map as plugins see it: ordered `(name, value)` pairs; request maps start with the
/// pseudo-headers `:method`, `:path`, `:authority`, `:scheme`, response maps with `:status`.
pub type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// Total bytes of a header list's names and values.
pub fn list_bytes(list: &HeaderList) -> usize {
    list.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The first value of `name` (case-insensitive).
pub fn list_get<'a>(list: &'a HeaderList, name: &[u8]) -> Option<&'a [u8]> {
    list.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Replaces every value of `name` with one `value` (appends if absent), keeping the position
/// of the first.
pub fn list_replace(list: &mut HeaderList, name: &[u8], value: &[u8]) {
    let mut seen = false;
    list.retain_mut(|(k, v)| {
        if !k.eq_ignore_ascii_case(name) {
            return true;
        }
        if seen {
            return false;
        }
        seen = true;
        *v = value.to_vec();
        true
    });
    if !seen {
        list.push((name.to_ascii_lowercase(), value.to_vec()));
    }
}

/// Removes every value of `name`.
pub fn list_remove(list: &mut HeaderList, name: &[u8]) {
    list.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}
