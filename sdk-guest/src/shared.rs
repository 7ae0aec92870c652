//! Shared data: values every VM of the plugin sees (on Sluice: one namespace per `vm_id`,
//! kept across reloads), with compare-and-swap updates that stay exact when several VMs
//! update the same key at once.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_abi::Status;

use crate::error::{Context, Error};
use crate::hostcalls;

/// How many times [`update`] retries after losing a compare-and-swap race.
pub const MAX_RETRIES: usize = 10_000;

/// A value that can live in shared data.
pub trait SharedValue: Sized {
    /// Its bytes.
    fn encode(&self) -> Vec<u8>;
    /// The value from its bytes; `None` if they are not one.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl SharedValue for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl SharedValue for i64 {
    fn encode(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<i64> {
        Some(i64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl SharedValue for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

impl SharedValue for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Any serde value, stored as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize + DeserializeOwned> SharedValue for Json<T> {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
    fn decode(bytes: &[u8]) -> Option<Json<T>> {
        serde_json::from_slice(bytes).ok().map(Json)
    }
}

fn decode<T: SharedValue>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    T::decode(bytes).ok_or_else(|| Error::Other(format!("shared data {key:?} holds another type")))
}

/// The value of `key`, or `None`.
pub fn get<T: SharedValue>(key: &str) -> Result<Option<T>, Error> {
    match hostcalls::shared_get(key).during("read shared data")? {
        Some((bytes, _)) => decode(key, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Reads `key` with its version (the host's compare-and-swap value, which changes on every
/// write): a reader that keeps the version can tell cheaply whether the value changed since,
/// and write only if it did not with [`set_if_version`].
pub fn get_versioned<T: SharedValue>(key: &str) -> Result<Option<(T, u32)>, Error> {
    match hostcalls::shared_get(key).during("read shared data")? {
        Some((bytes, cas)) => Ok(Some((decode(key, &bytes)?, cas))),
        None => Ok(None),
    }
}

/// Sets `key` to `value` if its version is still `version` (from [`get_versioned`]); `false`
/// if another writer got there first. Version 0 writes whatever the key holds (and creates a
/// missing key).
pub fn set_if_version<T: SharedValue>(key: &str, value: &T, version: u32) -> Result<bool, Error> {
    match hostcalls::shared_set(key, &value.encode(), version) {
        Ok(()) => Ok(true),
        Err(Status::CasMismatch) => Ok(false),
        Err(status) => Err(Error::Host {
            call: "write shared data",
            status,
        }),
    }
}

/// Sets `key` to `value`, whatever it held.
pub fn set<T: SharedValue>(key: &str, value: &T) -> Result<(), Error> {
    hostcalls::shared_set(key, &value.encode(), 0).during("write shared data")
}

/// Reads `key`, lets `f` decide, and writes what it returns, atomically: if another VM
/// changed the key in between, `f` runs again on the new value. `f` returns the value to
/// store (`None`: leave the key as it is) and a result for the caller.
///
/// ```no_run
/// // Count requests exactly, across every VM of the plugin.
/// let n: u64 = sluice_sdk::shared::update("hits", |old: Option<u64>| {
///     let n = old.unwrap_or(0) + 1;
///     (Some(n), n)
/// })?;
/// # Ok::<(), sluice_sdk::Error>(())
/// ```
///
/// Creating a key is made atomic too (the ABI's `set` creates a missing key whatever the
/// compare-and-swap value): creations take a lock kept in shared data under
/// [`CREATE_LOCK`].
pub fn update<T: SharedValue, R>(
    key: &str,
    mut f: impl FnMut(Option<T>) -> (Option<T>, R),
) -> Result<R, Error> {
    for _ in 0..MAX_RETRIES {
        match hostcalls::shared_get(key).during("read shared data")? {
            Some((bytes, cas)) => {
                let (new, r) = f(Some(decode(key, &bytes)?));
                let Some(new) = new else { return Ok(r) };
                match hostcalls::shared_set(key, &new.encode(), cas) {
                    Ok(()) => return Ok(r),
                    Err(Status::CasMismatch) => continue,
                    Err(status) => {
                        return Err(Error::Host {
                            call: "write shared data",
                            status,
                        })
                    }
                }
            }
            None => {
                if let Some(r) = create(key, &mut f)? {
                    return Ok(r);
                }
            }
        }
    }
    Err(Error::Contended(key.to_string()))
}

/// The shared-data key of the lock that makes key creation atomic.
pub const CREATE_LOCK: &str = "sluice-sdk/create-lock";

/// A lock older than this is taken over (its holder died holding it).
const LOCK_STALE_NANOS: u64 = 100_000_000;

/// Makes sure the creation lock exists. The SDK calls it when the plugin is configured,
/// before any request, so that the lock itself is never created concurrently.
pub(crate) fn init_create_lock() -> Result<(), Error> {
    if hostcalls::shared_get(CREATE_LOCK)
        .during("read shared data")?
        .is_none()
    {
        hostcalls::shared_set(CREATE_LOCK, &0u64.encode(), 0).during("write shared data")?;
    }
    Ok(())
}

/// Creates `key` with what `f` returns for no value, under the creation lock. `Ok(None)`: the
/// key exists now (another VM created it, or the lock was busy): the caller retries.
fn create<T: SharedValue, R>(
    key: &str,
    f: &mut impl FnMut(Option<T>) -> (Option<T>, R),
) -> Result<Option<R>, Error> {
    let Some(lock_cas) = acquire()? else {
        return Ok(None);
    };
    let result = (|| {
        if hostcalls::shared_get(key)
            .during("read shared data")?
            .is_some()
        {
            return Ok(None);
        }
        let (new, r) = f(None);
        if let Some(new) = new {
            hostcalls::shared_set(key, &new.encode(), 0).during("write shared data")?;
        }
        Ok(Some(r))
    })();
    release(lock_cas);
    result
}

/// Takes the creation lock; `None` if another VM holds it.
fn acquire() -> Result<Option<u32>, Error> {
    let now = hostcalls::now_nanos().during("read the clock")?.max(1);
    let (holder, cas) = match hostcalls::shared_get(CREATE_LOCK).during("read shared data")? {
        Some((bytes, cas)) => (u64::decode(&bytes).unwrap_or(0), cas),
        // Only before `init_create_lock` ran (another host's start-up order): create it.
        None => {
            init_create_lock()?;
            return Ok(None);
        }
    };
    if holder != 0 && now.saturating_sub(holder) < LOCK_STALE_NANOS {
        return Ok(None);
    }
    match hostcalls::shared_set(CREATE_LOCK, &now.encode(), cas) {
        Ok(()) => Ok(hostcalls::shared_get(CREATE_LOCK)
            .during("read shared data")?
            .map(|(_, cas)| cas)),
        Err(Status::CasMismatch) => Ok(None),
        Err(status) => Err(Error::Host {
            call: "write shared data",
            status,
        }),
    }
}

/// Frees the lock, unless it was taken over meanwhile (then the new holder frees it).
fn release(cas: u32) {
    let _ = hostcalls::shared_set(CREATE_LOCK, &0u64.encode(), cas);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        assert_eq!(u64::decode(&42u64.encode()), Some(42));
        assert_eq!(i64::decode(&(-7i64).encode()), Some(-7));
        assert_eq!(u64::decode(b"short"), None);
        assert_eq!(
            String::decode(&"hé".to_string().encode()).as_deref(),
            Some("hé")
        );
        assert_eq!(String::decode(b"\xff"), None);
        let j = Json(vec![1u32, 2]);
        assert_eq!(Json::<Vec<u32>>::decode(&j.encode()), Some(j));
        assert_eq!(Vec::<u8>::decode(b"ab"), Some(b"ab".to_vec()));
    }

    #[test]
    fn off_wasm_updates_report_the_host() {
        let e = update("k", |v: Option<u64>| (v, ())).unwrap_err();
        assert_eq!(e.status(), Some(Status::Unimplemented));
    }
}
