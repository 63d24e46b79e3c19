//! Lock keys: a name and parts, percent-escaped into one Redis Cluster hash tag.

use std::fmt::{self, Display, Write as _};

/// The identity of a lock: a namespace (`name`) and zero or more parts, usually derived from the
/// guarded function's first argument.
///
/// Rendered (see [`Display`]) as `name:part:part…`, with every `:`, `{`, `}` and `%` inside the
/// name or a part percent-escaped, so two different `(name, parts)` never render the same. The
/// manager wraps that in a hash tag: `lock:{keyword:42}`.
///
/// ```
/// use lock_guard::LockKey;
/// let key = LockKey::new("keyword").part(42).part("a:b");
/// assert_eq!(key.to_string(), "keyword:42:a%3Ab");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockKey {
    encoded: String,
}

impl LockKey {
    /// A key with the given name and no parts yet.
    pub fn new(name: &str) -> Self {
        let mut encoded = String::with_capacity(name.len() + 16);
        escape_into(&mut encoded, name);
        LockKey { encoded }
    }

    /// Appends one part, rendered with [`Display`] and escaped.
    pub fn part(mut self, part: impl Display) -> Self {
        self.push_part(&part);
        self
    }

    /// Appends one part in place.
    pub fn push_part(&mut self, part: &dyn Display) {
        self.encoded.push(':');
        let mut w = Escaper(&mut self.encoded);
        // Writing into a String cannot fail; a `Display` impl that returns an error anyway leaves
        // what it wrote so far, which still names a distinct key.
        let _ = write!(w, "{part}");
    }

    /// The escaped `name:part…` text, the content of the hash tag.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }
}

impl Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encoded)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockKey").field(&self.encoded).finish()
    }
}

/// Percent-escapes the four characters that structure a key.
fn escape_into(out: &mut String, s: &str) {
    let _ = Escaper(out).write_str(s);
}

struct Escaper<'a>(&'a mut String);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find([':', '{', '}', '%']) {
            self.0.push_str(&rest[..i]);
            self.0.push_str(match rest.as_bytes()[i] {
                b':' => "%3A",
                b'{' => "%7B",
                b'}' => "%7D",
                _ => "%25",
            });
            rest = &rest[i + 1..];
        }
        self.0.push_str(rest);
        Ok(())
    }
}

/// Something that contributes the parts of a lock key: any [`Display`] value (one part), or an
/// [`Unordered`] pair (two parts in sorted order). The attribute also takes a tuple of these as one
/// key value, one part per element.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a lock key: it does not implement `Display`",
    label = "this argument becomes the lock key",
    note = "give the key explicitly, e.g. `#[concurrency_guard(name = \"…\", key = arg.id)]`, or implement `Display` for `{Self}`"
)]
pub trait KeyParts {
    /// Appends this value's parts to `key`.
    fn push_parts(&self, key: &mut LockKey);
}

impl<T: Display + ?Sized> KeyParts for T {
    fn push_parts(&self, key: &mut LockKey) {
        key.push_part(&self);
    }
}

/// Two key parts taken in sorted order, so `unordered(7, 9)` and `unordered(9, 7)` name the same
/// lock: for symmetric relations (two users liking each other, a transfer between two accounts).
///
/// ```
/// use lock_guard::{unordered, LockKey, KeyParts};
/// let mut a = LockKey::new("like");
/// unordered(7, 9).push_parts(&mut a);
/// let mut b = LockKey::new("like");
/// unordered(9, 7).push_parts(&mut b);
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), "like:7:9");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Unordered<A>(A, A);

/// Makes an [`Unordered`] pair: the lock key for `key = lock_guard::unordered(a, b)`.
pub fn unordered<A: Ord + Display>(a: A, b: A) -> Unordered<A> {
    if a <= b {
        Unordered(a, b)
    } else {
        Unordered(b, a)
    }
}

impl<A: Display> KeyParts for Unordered<A> {
    fn push_parts(&self, key: &mut LockKey) {
        key.push_part(&self.0);
        key.push_part(&self.1);
    }
}

/// A tuple used as one key value (`key = pair` with `pair: (u32, &str)`, or a first argument of
/// tuple type): one part per element, in order, as if written `key = (pair.0, pair.1)`. Implemented
/// for tuples of one to six [`KeyParts`].
///
/// Not a [`KeyParts`] impl: `KeyParts` covers every [`Display`] type, and Rust's coherence rules
/// refuse a second impl for tuples beside that one (the standard library may implement `Display`
/// for tuples some day). The attribute's expansion picks this trait for a tuple and `KeyParts` for
/// anything else (see `__private::Part`).
pub trait TupleParts {
    /// Appends one part per element to `key`.
    fn push_parts(&self, key: &mut LockKey);
}

macro_rules! tuple_parts {
    ($($element:ident . $index:tt),+) => {
        impl<$($element: KeyParts),+> TupleParts for ($($element,)+) {
            fn push_parts(&self, key: &mut LockKey) {
                $(self.$index.push_parts(key);)+
            }
        }
    };
}

tuple_parts!(A.0);
tuple_parts!(A.0, B.1);
tuple_parts!(A.0, B.1, C.2);
tuple_parts!(A.0, B.1, C.2, D.3);
tuple_parts!(A.0, B.1, C.2, D.3, E.4);
tuple_parts!(A.0, B.1, C.2, D.3, E.4, F.5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_structure_characters() {
        let k = LockKey::new("a:b{c}%").part("x:{y}").part(1);
        assert_eq!(k.as_str(), "a%3Ab%7Bc%7D%25:x%3A%7By%7D:1");
    }

    #[test]
    fn parts_and_names_do_not_merge() {
        assert_ne!(
            LockKey::new("a").part("b:c"),
            LockKey::new("a").part("b").part("c")
        );
        assert_ne!(LockKey::new("a:b"), LockKey::new("a").part("b"));
        assert_ne!(LockKey::new("a"), LockKey::new("a").part(""));
    }

    fn of_tuple(tuple: &impl TupleParts) -> LockKey {
        let mut key = LockKey::new("t");
        tuple.push_parts(&mut key);
        key
    }

    #[test]
    fn a_tuple_gives_one_part_per_element() {
        assert_eq!(of_tuple(&(7,)), LockKey::new("t").part(7));
        assert_eq!(of_tuple(&(7, "x")), LockKey::new("t").part(7).part("x"));
        let six = of_tuple(&(1, "b:c", '3', 4.5, String::from("{e}"), &6u8));
        assert_eq!(six.as_str(), "t:1:b%3Ac:3:4.5:%7Be%7D:6");
        let parts = ["1", "b:c", "3", "4.5", "{e}", "6"];
        assert_eq!(six, parts.iter().fold(LockKey::new("t"), |k, p| k.part(p)));
    }

    #[test]
    fn tuple_elements_are_key_parts() {
        // an `Unordered` element gives its two parts in sorted order
        assert_eq!(
            of_tuple(&("acme", unordered(9, 7))),
            LockKey::new("t").part("acme").part(7).part(9)
        );
        // a tuple is not one `Display` part: its parts stay apart
        assert_ne!(of_tuple(&("a", "b")), LockKey::new("t").part("a:b"));
    }
}
