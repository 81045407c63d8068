//! Text pipeline: tokenizer rules, spaCy-compatible word splitting, vocabularies,
//! corpus readers, numericalized token files and batches.

pub mod batches;
pub mod encoding;
pub mod readers;
pub mod rules;
pub mod spacy;
pub mod subword;
pub mod token_file;
pub mod tokenizer;
pub mod vocab;

/// Unknown word.
pub const UNK: &str = "xxunk";
/// Padding.
pub const PAD: &str = "xxpad";
/// Beginning of a document.
pub const BOS: &str = "xxbos";
/// End of a document.
pub const EOS: &str = "xxeos";
/// Separator between the fields of a multi-column document.
pub const FLD: &str = "xxfld";
/// Character repetition marker: `xxrep 4 !`.
pub const REP: &str = "xxrep";
/// Word repetition marker: `xxwrep 5 word`.
pub const WREP: &str = "xxwrep";
/// Marks the next word as written in capitals.
pub const UP: &str = "xxup";
/// Marks the next word as capitalised.
pub const MAJ: &str = "xxmaj";

/// fastai 2.x's special tokens in vocabulary order (ids 0 to 8).
pub const SPECIAL_TOKENS: [&str; 9] = [UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ];
