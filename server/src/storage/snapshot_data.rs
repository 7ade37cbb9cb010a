//! The encoding of snapshot data: the state tree's pairs in key order,
//! each as (u32 key length, key, u32 value length, value), big-endian.
//! Raft ships it between nodes; a backup file carries it unchanged.

use std::io;

pub fn put(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// The (key, value) pairs of `data` in order, one at a time (a malformed
/// tail ends the iteration with an error).
pub fn iter(data: &[u8]) -> impl Iterator<Item = io::Result<(&[u8], &[u8])>> {
    fn take<'a>(rest: &mut &'a [u8]) -> io::Result<&'a [u8]> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed snapshot data");
        let len = u32::from_be_bytes(rest.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let v = rest.get(4..4 + len).ok_or_else(bad)?;
        *rest = &rest[4 + len..];
        Ok(v)
    }
    let mut rest = data;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let pair = take(&mut rest).and_then(|k| Ok((k, take(&mut rest)?)));
        failed = pair.is_err();
        Some(pair)
    })
}

/// Every (key, value) pair of `data`, or an error if it is malformed.
pub fn pairs(data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    iter(data).collect()
}

/// The value of `key` in `data`, if present.
pub fn get<'a>(data: &'a [u8], key: &[u8]) -> io::Result<Option<&'a [u8]>> {
    Ok(pairs(data)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v))
}

/// `data` with the value of `key` set to `value` (added if absent).
pub fn replace(data: &[u8], key: &[u8], value: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + value.len());
    let mut done = false;
    for (k, v) in pairs(data)? {
        if k == key {
            put(&mut out, k, value);
            done = true;
        } else {
            put(&mut out, k, v);
        }
    }
    if !done {
        put(&mut out, key, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_replace() {
        let mut d = Vec::new();
        put(&mut d, b"a", b"1");
        put(&mut d, b"b", b"");
        assert_eq!(
            pairs(&d).unwrap(),
            vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b""[..])]
        );
        let r = replace(&d, b"a", b"22").unwrap();
        assert_eq!(get(&r, b"a").unwrap(), Some(&b"22"[..]));
        let r = replace(&r, b"c", b"3").unwrap();
        assert_eq!(get(&r, b"c").unwrap(), Some(&b"3"[..]));
        assert!(pairs(&d[..d.len() - 1]).is_err());
    }
}
