//! The symbols every CLIP-style vocabulary starts from. Each byte gets a visible character,
//! so BPE runs on text with no unknown symbols and any UTF-8 input round-trips; each of those
//! also exists with the end-of-word marker, since BPE treats the last symbol of a word apart.

/// Appended to the last symbol of every word: "dog" is `d`, `o`, `g</w>` before merging.
pub(crate) const END_OF_WORD: &str = "</w>";
/// The start-of-text token.
pub(crate) const SOT: &str = "<|startoftext|>";
/// The end-of-text token, the largest id of every vocabulary here.
pub(crate) const EOT: &str = "<|endoftext|>";

/// Whether a byte is printable Latin-1, standing for itself in the byte alphabet.
fn printable(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 256 byte symbols in CLIP's id order: the printable bytes as themselves, in byte order,
/// then the other bytes, in byte order, as the characters from U+0100 up. The engine's
/// byte-level pre-tokeniser uses the same byte-to-character map; only the order is ours.
fn byte_symbols() -> impl Iterator<Item = char> {
    let shown = (0..=255u8).filter(|&b| printable(b)).map(char::from);
    let hidden = (0..=255u8).filter(|&b| !printable(b)).zip('\u{100}'..).map(|(_, c)| c);
    shown.chain(hidden)
}

/// The first 512 tokens of the vocabulary, ids 0..512: the byte symbols, then the same with
/// [`END_OF_WORD`]. Any word can be spelled with them, so nothing encodes as unknown.
pub(crate) fn base_symbols() -> Vec<String> {
    let plain = byte_symbols().map(String::from);
    let word_final = byte_symbols().map(|c| format!("{c}{END_OF_WORD}"));
    plain.chain(word_final).collect()
}
