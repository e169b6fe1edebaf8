//! Tokens of conntrackd's configuration language (conntrack-tools 1.4.7,
//! `read_config_lex.l`): words, `{` and `}`, each with its 1-based line.
//!
//! Owns: splitting text into tokens and dropping `#` comments. Must not:
//! know any keyword (the parser does) or fail on any input: every byte
//! sequence becomes tokens, so bad files get their error from the parser,
//! with a line.

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A keyword, number, address, path or name: anything between blanks,
    /// braces and comments.
    Word(String),
    /// `{`
    Open,
    /// `}`
    Close,
}

/// One token and the line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub line: usize,
}

impl Token {
    /// How the token reads in an error message.
    pub fn show(&self) -> String {
        match &self.kind {
            Kind::Word(w) => format!("'{w}'"),
            Kind::Open => "'{'".to_string(),
            Kind::Close => "'}'".to_string(),
        }
    }
}

/// Split `text` into tokens. conntrackd's lexer treats `#` as the start of
/// a comment anywhere (also inside a word), and so does this one; any other
/// byte that is not blank or a brace is part of a word (checking words is
/// the parser's job).
pub fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let code = raw.split('#').next().unwrap_or("");
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut Vec<Token>| {
            if !word.is_empty() {
                out.push(Token {
                    kind: Kind::Word(std::mem::take(word)),
                    line,
                });
            }
        };
        for c in code.chars() {
            match c {
                '{' | '}' => {
                    flush(&mut word, &mut out);
                    out.push(Token {
                        kind: if c == '{' { Kind::Open } else { Kind::Close },
                        line,
                    });
                }
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, usize)> {
        tokens(text)
            .into_iter()
            .map(|t| match t.kind {
                Kind::Word(w) => (w, t.line),
                Kind::Open => ("{".into(), t.line),
                Kind::Close => ("}".into(), t.line),
            })
            .collect()
    }

    #[test]
    fn braces_split_words_and_comments_end_at_the_newline() {
        let got = words("General{HashSize 8192 # comment { }\n\tUNIX { Path /run/x.ctl }\n}");
        let want: Vec<(String, usize)> = [
            ("General", 1),
            ("{", 1),
            ("HashSize", 1),
            ("8192", 1),
            ("UNIX", 2),
            ("{", 2),
            ("Path", 2),
            ("/run/x.ctl", 2),
            ("}", 2),
            ("}", 3),
        ]
        .iter()
        .map(|(w, l)| (w.to_string(), *l))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn crlf_and_tabs_are_blanks() {
        let got = words("Sync {\r\n\tMode FTFW {\r\n}\r\n}\r\n");
        assert_eq!(got.len(), 7);
        assert_eq!(got[2], ("Mode".to_string(), 2));
        assert_eq!(got[3], ("FTFW".to_string(), 2));
        assert_eq!(got[6], ("}".to_string(), 4));
    }

    #[test]
    fn a_hash_inside_a_word_starts_a_comment() {
        let got = words("LockFile /var/lock/x#y\n");
        assert_eq!(got[1].0, "/var/lock/x");
    }
}
