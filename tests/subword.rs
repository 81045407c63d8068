//! Tests of Unigram and BPE subword models trained on a small generated corpus.

use std::sync::OnceLock;

use ulmfit::text::subword::{train_subword, SubwordError, SubwordKind, SubwordModel};
use ulmfit::text::vocab::{Vocab, VocabKind, VOCAB_JSON, VOCAB_TXT};
use ulmfit::text::SPECIAL_TOKENS;

const VOCAB_SIZE: usize = 200;

const ENGLISH: [&str; 24] = [
    "the", "cat", "sat", "on", "mat", "movie", "was", "good", "bad", "really", "film", "actor",
    "played", "role", "story", "ending", "watched", "it", "twice", "and", "loved", "music",
    "boring", "plot",
];
const THAI: [&str; 10] = [
    "สวัสดี",
    "ครับ",
    "ขอบคุณ",
    "มาก",
    "ภาษา",
    "ไทย",
    "ดี",
    "วันนี้",
    "อากาศ",
    "ร้อน",
];
const CHINESE: [&str; 10] = [
    "我们", "喜欢", "学习", "中文", "今天", "天气", "很好", "朋友", "北京", "电影",
];

/// Deterministic linear congruential generator, so the corpus is the same every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

/// Builds 400 sentences in the shape of fastai's rule output: English sentences with
/// `xxbos`, `xxmaj`, `xxup` and whitespace tokens, plus Thai and Chinese sentences of
/// 3 to 6 words written without spaces.
fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut rng = Lcg(42);
        let mut sentences = Vec::new();
        for index in 0..400 {
            let sentence = match index % 5 {
                3 => (0..3 + rng.below(4))
                    .map(|_| rng.pick(&THAI))
                    .collect::<String>(),
                4 => (0..3 + rng.below(4)).map(|_| rng.pick(&CHINESE)).collect(),
                _ => {
                    let mut words = vec!["xxbos", "xxmaj"];
                    for position in 0..4 + rng.below(8) {
                        match rng.below(10) {
                            0 => words.push("xxup"),
                            1 if position > 0 => words.push("\n\n"),
                            _ => {}
                        }
                        words.push(rng.pick(&ENGLISH));
                    }
                    words.push(".");
                    words.join(" ")
                }
            };
            sentences.push(sentence);
        }
        sentences
    })
}

fn unigram() -> &'static SubwordModel {
    static MODEL: OnceLock<SubwordModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        train_subword(corpus(), SubwordKind::Unigram, VOCAB_SIZE, &SPECIAL_TOKENS).unwrap()
    })
}

fn bpe() -> &'static SubwordModel {
    static MODEL: OnceLock<SubwordModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        train_subword(corpus(), SubwordKind::Bpe, VOCAB_SIZE, &SPECIAL_TOKENS).unwrap()
    })
}

fn models() -> [(&'static str, &'static SubwordModel); 2] {
    [("unigram", unigram()), ("bpe", bpe())]
}

#[test]
fn specials_take_ids_0_to_8() {
    for (name, model) in models() {
        let vocab = model.vocab();
        assert_eq!(&vocab.tokens()[..9], SPECIAL_TOKENS.as_slice(), "{name}");
        for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(
                model.tokenizer().token_to_id(token),
                Some(id as u32),
                "{name} {token}"
            );
        }
        let ids = model.encode_ids("xxbos xxmaj the xxup cat").unwrap();
        assert_eq!(ids[..2], [2, 8], "{name}");
        assert!(ids.contains(&7), "{name}: {ids:?}");
    }
}

#[test]
fn vocab_size_is_respected() {
    for (name, model) in models() {
        let size = model.vocab().len();
        assert!(size <= VOCAB_SIZE, "{name}: {size}");
        assert!(size > 100, "{name}: {size}");
    }
}

#[test]
fn special_words_are_not_learned() {
    for (name, model) in models() {
        let vocab = model.vocab();
        for special in SPECIAL_TOKENS {
            let marked = format!("\u{2581}{special}");
            assert_eq!(vocab.get(&marked), None, "{name} {marked}");
        }
    }
}

#[test]
fn encode_decode_round_trips() {
    for (name, model) in models() {
        for sentence in corpus().iter().take(60) {
            let pieces = model.encode(sentence).unwrap();
            assert_eq!(&model.decode(&pieces), sentence, "{name}: {pieces:?}");
        }
        for text in ["the  cat", " the cat", "xxmaj  the", "the cat "] {
            let pieces = model.encode(text).unwrap();
            assert_eq!(model.decode(&pieces), text, "{name}: {pieces:?}");
        }
    }
}

#[test]
fn pieces_join_to_text() {
    let text = "the movie was really good and the ending was boring";
    for (name, model) in models() {
        let pieces = model.encode(text).unwrap();
        let joined = pieces.concat().replace('\u{2581}', " ");
        assert_eq!(joined, format!(" {text}"), "{name}: {pieces:?}");
        assert!(pieces.len() >= 10, "{name}: {pieces:?}");
    }
}

#[test]
fn special_tokens_stay_whole() {
    for (name, model) in models() {
        let pieces = model
            .encode("xxbos xxmaj the xxup cat \n\n xxmaj it")
            .unwrap();
        assert_eq!(pieces[0], "xxbos", "{name}");
        assert_eq!(pieces[1], "xxmaj", "{name}");
        let specials: Vec<&String> = pieces.iter().filter(|p| p.starts_with("xx")).collect();
        assert_eq!(
            specials,
            ["xxbos", "xxmaj", "xxup", "xxmaj"],
            "{name}: {pieces:?}"
        );
    }
}

#[test]
fn ids_match_vocab() {
    let text = "xxbos xxmaj the actor played the role twice .";
    for (name, model) in models() {
        let pieces = model.encode(text).unwrap();
        let ids = model.encode_ids(text).unwrap();
        assert_eq!(model.vocab().encode(&pieces), ids, "{name}");
        assert!(!ids.contains(&0), "{name}: {pieces:?}");
    }
}

#[test]
fn unknown_character_maps_to_xxunk() {
    for (name, model) in models() {
        let ids = model.encode_ids("the Ω cat").unwrap();
        assert!(ids.contains(&0), "{name}: {ids:?}");
    }
}

#[test]
fn unspaced_scripts_split_into_pieces() {
    // Seven-word sequences never occur in the corpus, whose sentences have 3 to 6 words.
    let thai = "วันนี้อากาศร้อนมากขอบคุณครับสวัสดี";
    let chinese = "我们今天学习中文电影朋友北京";
    for (name, model) in models() {
        for text in [thai, chinese] {
            let pieces = model.encode(text).unwrap();
            assert!(pieces.len() >= 2, "{name}: {pieces:?}");
            assert_eq!(
                pieces.concat(),
                format!("\u{2581}{text}"),
                "{name}: {pieces:?}"
            );
        }
    }
}

#[test]
fn save_load_encodes_identically() {
    let text = "xxbos xxmaj the cat sat \n\n xxup and 我们喜欢电影 วันนี้อากาศดี .";
    for (name, model) in models() {
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), "fastai").unwrap();
        let loaded = SubwordModel::load(dir.path()).unwrap();

        assert_eq!(loaded.kind(), model.kind(), "{name}");
        assert_eq!(loaded.vocab(), model.vocab(), "{name}");
        assert_eq!(
            loaded.encode(text).unwrap(),
            model.encode(text).unwrap(),
            "{name}"
        );
        assert_eq!(
            loaded.encode_ids(text).unwrap(),
            model.encode_ids(text).unwrap(),
            "{name}"
        );

        let (vocab, header) = Vocab::load_with_header(dir.path()).unwrap();
        assert_eq!(&vocab, model.vocab(), "{name}");
        assert_eq!(header.rules, "fastai", "{name}");
        let expected_kind = match model.kind() {
            SubwordKind::Unigram => VocabKind::Unigram,
            SubwordKind::Bpe => VocabKind::Bpe,
        };
        assert_eq!(header.kind, expected_kind, "{name}");
    }
}

#[test]
fn load_rejects_foreign_vocab() {
    let unigram_dir = tempfile::tempdir().unwrap();
    unigram().save(unigram_dir.path(), "fastai").unwrap();
    let bpe_dir = tempfile::tempdir().unwrap();
    bpe().save(bpe_dir.path(), "fastai").unwrap();
    for file in [VOCAB_TXT, VOCAB_JSON] {
        std::fs::copy(bpe_dir.path().join(file), unigram_dir.path().join(file)).unwrap();
    }

    let error = SubwordModel::load(unigram_dir.path()).unwrap_err();
    assert!(
        matches!(error, SubwordError::VocabMismatch { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("tokenizer.json"), "{error}");
}

#[test]
fn train_rejects_bad_specials() {
    let error = train_subword(corpus(), SubwordKind::Bpe, 100, &["xxpad", "xxunk"]).unwrap_err();
    assert!(
        matches!(error, SubwordError::InvalidSpecialTokens { .. }),
        "{error}"
    );
    let duplicate =
        train_subword(corpus(), SubwordKind::Bpe, 100, &["xxunk", "xxunk"]).unwrap_err();
    assert!(
        matches!(duplicate, SubwordError::InvalidSpecialTokens { .. }),
        "{duplicate}"
    );
}

#[test]
fn train_rejects_tiny_vocab_size() {
    let error = train_subword(corpus(), SubwordKind::Unigram, 9, &SPECIAL_TOKENS).unwrap_err();
    assert!(
        matches!(
            error,
            SubwordError::InvalidVocabSize {
                vocab_size: 9,
                specials: 9
            }
        ),
        "{error}"
    );
}
