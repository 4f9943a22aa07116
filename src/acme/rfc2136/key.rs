//! The TSIG key (RFC 8945) that signs the updates: read from a BIND key
//! file as `tsig-keygen` writes it, or given in parts.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hickory_proto::rr::rdata::tsig::TsigAlgorithm as WireAlgorithm;
use hickory_proto::rr::{Name, TSigner};
use zeroize::Zeroizing;

/// How far the clocks of the solver and the DNS server may differ (RFC 8945
/// §10 recommends 300 s).
const FUDGE_SECONDS: u16 = 300;

/// The largest key file read: one key is under 200 bytes.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The HMAC a [`TsigKey`] signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TsigAlgorithm {
    /// `hmac-sha256` (what `tsig-keygen` makes by default).
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name in key files and on the wire (`hmac-sha256`).
    ///
    /// ```
    /// use certrotate::acme::rfc2136::TsigAlgorithm;
    /// assert_eq!(TsigAlgorithm::HmacSha512.name(), "hmac-sha512");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    /// The algorithm named `name` (case-insensitive, with or without a
    /// final dot), if it is one of those supported.
    ///
    /// ```
    /// use certrotate::acme::rfc2136::TsigAlgorithm;
    /// assert_eq!(TsigAlgorithm::from_name("HMAC-SHA256."), Some(TsigAlgorithm::HmacSha256));
    /// assert_eq!(TsigAlgorithm::from_name("hmac-md5"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.strip_suffix('.').unwrap_or(name);
        [Self::HmacSha256, Self::HmacSha384, Self::HmacSha512]
            .into_iter()
            .find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
    }

    fn wire(self) -> WireAlgorithm {
        match self {
            Self::HmacSha256 => WireAlgorithm::HmacSha256,
            Self::HmacSha384 => WireAlgorithm::HmacSha384,
            Self::HmacSha512 => WireAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A TSIG key: its name (which the DNS server knows it by), algorithm and
/// secret. The secret is never printed, and this key's copy of it is wiped
/// from memory when it is dropped (the signer of hickory-proto keeps one
/// of its own while the solver lives).
///
/// ```
/// use certrotate::acme::rfc2136::{TsigAlgorithm, TsigKey};
///
/// let file = "key \"certrotate\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0IGJ5dGVzIGZvciB0aGUgdGVzdA==\";\n};\n";
/// let key = TsigKey::parse(file)?;
/// assert_eq!(key.name(), "certrotate");
/// assert_eq!(key.algorithm(), TsigAlgorithm::HmacSha256);
/// assert!(!format!("{key:?}").contains("c2Vj"));
/// # Ok::<(), certrotate::acme::rfc2136::KeyFileError>(())
/// ```
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    algorithm: TsigAlgorithm,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a TSIG key could not be read or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The key file could not be read.
    #[error("cannot read the TSIG key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a BIND key statement (`key "NAME" { algorithm
    /// ALG; secret "BASE64"; };`), or has no key, or more than one.
    #[error("not a BIND key file ({0}); make one with `tsig-keygen -a hmac-sha256 NAME`")]
    Syntax(String),
    /// The key's algorithm is not supported (HMAC-MD5 and HMAC-SHA1 are
    /// deprecated by RFC 8945).
    #[error("TSIG algorithm {0:?} is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512")]
    Algorithm(String),
    /// The key's name is not a valid DNS name.
    #[error("the TSIG key name {0:?} is not a DNS name")]
    Name(String),
    /// The secret is not base64, or is empty.
    #[error("the TSIG secret is not base64 or is empty")]
    Secret,
}

impl TsigKey {
    /// A key from its parts: `name` as the server knows it, and the secret
    /// bytes (not base64).
    ///
    /// ```
    /// use certrotate::acme::rfc2136::{TsigAlgorithm, TsigKey};
    /// let key = TsigKey::new("update-key", TsigAlgorithm::HmacSha512, b"0123456789abcdef".to_vec())?;
    /// assert_eq!(key.name(), "update-key");
    /// # Ok::<(), certrotate::acme::rfc2136::KeyFileError>(())
    /// ```
    pub fn new(
        name: impl Into<String>,
        algorithm: TsigAlgorithm,
        secret: Vec<u8>,
    ) -> Result<Self, KeyFileError> {
        let secret = Zeroizing::new(secret);
        let name = name.into();
        let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
        if Name::from_ascii(&name).is_err() || name.is_empty() {
            return Err(KeyFileError::Name(name));
        }
        if secret.is_empty() {
            return Err(KeyFileError::Secret);
        }
        Ok(Self {
            name,
            algorithm,
            secret,
        })
    }

    /// The key in the BIND key file at `path` (what `tsig-keygen` prints and
    /// `nsupdate -k` reads). The file must hold exactly one key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        let path = path.as_ref();
        let read = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(KeyFileError::Syntax(format!(
                "over {} bytes: not a key file",
                MAX_KEY_FILE
            )));
        }
        Self::parse(&text)
    }

    /// The key in the text of a BIND key file (one `key` statement;
    /// comments in `#`, `//` and `/* */` are allowed).
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let tokens = Tokens(tokens(text)?);
        let mut keys = Vec::new();
        let mut rest = tokens.0.as_slice();
        while !rest.is_empty() {
            let (key, after) = key_statement(rest)?;
            keys.push(key);
            rest = after;
        }
        if keys.len() > 1 {
            let n = keys.len();
            let why = format!("{n} key statements; give a file with one");
            return Err(KeyFileError::Syntax(why));
        }
        keys.pop()
            .ok_or_else(|| KeyFileError::Syntax("no key statement".into()))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> TsigAlgorithm {
        self.algorithm
    }

    /// The signer of the wire format.
    pub(super) fn signer(&self) -> TSigner {
        let name = Name::from_ascii(&self.name).unwrap_or_else(|_| Name::root());
        // Cannot fail: the algorithms offered are those hickory supports.
        TSigner::new(
            self.secret.to_vec(),
            self.algorithm.wire(),
            name,
            FUDGE_SECONDS,
        )
        .expect("a supported TSIG algorithm")
    }
}

/// The tokens of a key file, wiped when dropped (the secret is one).
struct Tokens(Vec<Token>);

impl Drop for Tokens {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for token in &mut self.0 {
            if let Token::Word(text) | Token::Quoted(text) = token {
                text.zeroize();
            }
        }
    }
}

/// A token of BIND's configuration grammar.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Open,
    Close,
    End,
}

/// The tokens of `text`, comments left out.
fn tokens(text: &str) -> Result<Vec<Token>, KeyFileError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    match chars.next() {
                        Some('/') if last == '*' => break,
                        Some(c) => last = c,
                        None => return Err(KeyFileError::Syntax("unclosed comment".into())),
                    }
                }
            }
            '{' => tokens.push(Token::Open),
            '}' => tokens.push(Token::Close),
            ';' => tokens.push(Token::End),
            '"' => {
                let mut quoted = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => quoted.extend(chars.next()),
                        Some(c) => quoted.push(c),
                        None => return Err(KeyFileError::Syntax("unclosed quote".into())),
                    }
                }
                tokens.push(Token::Quoted(quoted));
            }
            c => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '{' | '}' | ';' | '"') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

/// One `key NAME { algorithm ALG; secret "BASE64"; };` statement at the
/// start of `tokens`, and the tokens after it.
fn key_statement(tokens: &[Token]) -> Result<(TsigKey, &[Token]), KeyFileError> {
    let syntax = |what: &str| KeyFileError::Syntax(what.to_owned());
    let [Token::Word(keyword), name, Token::Open, rest @ ..] = tokens else {
        return Err(syntax("expected `key \"NAME\" {`"));
    };
    if !keyword.eq_ignore_ascii_case("key") {
        return Err(KeyFileError::Syntax(format!(
            "expected a key statement, found {keyword:?}"
        )));
    }
    let name = match name {
        Token::Word(name) | Token::Quoted(name) => name.clone(),
        _ => return Err(syntax("expected the key's name after `key`")),
    };
    let (mut algorithm, mut secret) = (None, None);
    let mut rest = rest;
    loop {
        match rest {
            [Token::Close, Token::End, after @ ..] => {
                rest = after;
                break;
            }
            [Token::Word(field), value, Token::End, after @ ..] => {
                let value = match value {
                    Token::Word(value) | Token::Quoted(value) => value.as_str(),
                    _ => return Err(syntax("expected a value")),
                };
                let twice = || KeyFileError::Syntax(format!("{field} is given twice"));
                match field.to_ascii_lowercase().as_str() {
                    "algorithm" if algorithm.is_some() => return Err(twice()),
                    "secret" if secret.is_some() => return Err(twice()),
                    "algorithm" => algorithm = Some(value.to_owned()),
                    "secret" => secret = Some(Zeroizing::new(value.to_owned())),
                    other => {
                        return Err(KeyFileError::Syntax(format!(
                            "unknown field {other:?} in the key statement"
                        )))
                    }
                }
                rest = after;
            }
            _ => {
                return Err(syntax(
                    "expected `algorithm ALG;`, `secret \"...\";` or `};`",
                ))
            }
        }
    }
    let algorithm = algorithm.ok_or_else(|| syntax("the key has no algorithm"))?;
    let algorithm =
        TsigAlgorithm::from_name(&algorithm).ok_or(KeyFileError::Algorithm(algorithm))?;
    let secret = secret.ok_or_else(|| syntax("the key has no secret"))?;
    let secret = data_encoding::BASE64
        .decode(secret.as_bytes())
        .map_err(|_| KeyFileError::Secret)?;
    Ok((TsigKey::new(name, algorithm, secret)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str = "key \"certrotate\" {\n\talgorithm hmac-sha256;\n\tsecret \"oOKoIa8S/LKWkpYf9z9eKppdGoXt3XL+DynF4Ss70Ks=\";\n};\n";

    #[test]
    fn reads_what_tsig_keygen_writes() {
        let key = TsigKey::parse(GENERATED).unwrap();
        assert_eq!(key.name(), "certrotate");
        assert_eq!(key.algorithm(), TsigAlgorithm::HmacSha256);
        assert_eq!(key.secret.len(), 32);
    }

    #[test]
    fn reads_comments_and_other_spacing() {
        let text = "# made by hand\n/* a\n block */ key update.example. { // the key\n algorithm HMAC-SHA512; secret \"c2VjcmV0\"; };";
        let key = TsigKey::parse(text).unwrap();
        assert_eq!(key.name(), "update.example");
        assert_eq!(key.algorithm(), TsigAlgorithm::HmacSha512);
        assert_eq!(&key.secret[..], b"secret");
    }

    #[test]
    fn refuses_what_is_not_one_usable_key() {
        type Expected = fn(&KeyFileError) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("", |e| matches!(e, KeyFileError::Syntax(_))),
            ("key \"k\" { algorithm hmac-sha256; };", |e| {
                matches!(e, KeyFileError::Syntax(_))
            }),
            (
                "key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
                |e| matches!(e, KeyFileError::Algorithm(_)),
            ),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"not base64!\"; };",
                |e| matches!(e, KeyFileError::Secret),
            ),
            ("key \"k\" { algorithm hmac-sha256; secret \"\"; };", |e| {
                matches!(e, KeyFileError::Secret)
            }),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; ",
                |e| matches!(e, KeyFileError::Syntax(_)),
            ),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0",
                |e| matches!(e, KeyFileError::Syntax(_)),
            ),
            (
                "key \"a b..\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; };",
                |e| matches!(e, KeyFileError::Name(_)),
            ),
            ("options { directory \"/var\"; };", |e| {
                matches!(e, KeyFileError::Syntax(_))
            }),
        ];
        for (text, expected) in cases {
            let error = TsigKey::parse(text).unwrap_err();
            assert!(expected(&error), "{text:?}: {error:?}");
        }
        let two = format!("{GENERATED}{}", GENERATED.replace("certrotate", "other"));
        assert!(matches!(TsigKey::parse(&two), Err(KeyFileError::Syntax(_))));
        let twice = GENERATED.replace("};\n", "secret \"c2VjcmV0\";\n};\n");
        assert!(matches!(
            TsigKey::parse(&twice),
            Err(KeyFileError::Syntax(_))
        ));
        let nested = "{".repeat(100_000);
        assert!(matches!(
            TsigKey::parse(&nested),
            Err(KeyFileError::Syntax(_))
        ));
    }

    #[test]
    fn a_file_over_the_limit_is_refused_whole() {
        let path = std::env::temp_dir().join(format!("certrotate-big-key-{}", std::process::id()));
        let padding = "#".repeat(MAX_KEY_FILE as usize);
        std::fs::write(&path, format!("{GENERATED}{padding}\n{GENERATED}")).unwrap();
        let error = TsigKey::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(error, KeyFileError::Syntax(_)), "{error}");
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let error = TsigKey::from_file("/nonexistent/certrotate.key").unwrap_err();
        assert!(error.to_string().contains("/nonexistent/certrotate.key"));
    }
}
