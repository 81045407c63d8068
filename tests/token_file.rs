//! Token file round trips and the errors raised for invalid input and damaged files.

use std::fs;
use std::path::Path;

use ulmfit::text::token_file::{TokenFile, TokenFileError, TokenFileWriter, HEADER_LEN};

const HASH_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const HASH_B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn write_file(
    path: &Path,
    vocab_size: u64,
    docs: &[Vec<u32>],
    classes: Option<Vec<String>>,
    labels: &[u32],
) {
    let mut writer = TokenFileWriter::create(path, vocab_size, HASH_A, classes.clone()).unwrap();
    for (i, doc) in docs.iter().enumerate() {
        let label = classes.as_ref().map(|_| labels[i]);
        writer.push_document(doc, label).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn round_trip_u16_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let docs = vec![vec![2, 10, 65_535, 0], vec![], vec![2, 7, 8]];
    let classes = vec!["neg".to_string(), "pos".to_string(), "ünï".to_string()];
    write_file(&path, 65_536, &docs, Some(classes.clone()), &[1, 0, 2]);

    let file = TokenFile::open(&path, Some(HASH_A)).unwrap();
    assert_eq!(file.element_width(), 2);
    assert_eq!(file.vocab_size(), 65_536);
    assert_eq!(file.vocab_hash(), HASH_A);
    assert_eq!(file.n_documents(), 3);
    assert_eq!(file.n_tokens(), 7);
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(&file.document(i).unwrap().to_vec(), doc, "document {i}");
    }
    assert!(file.document(3).is_none());
    assert_eq!(file.label(0), Some(1));
    assert_eq!(file.label(1), Some(0));
    assert_eq!(file.label(2), Some(2));
    assert_eq!(file.label(3), None);
    assert_eq!(file.classes(), classes.as_slice());
    assert_eq!(file.lengths(), vec![4, 0, 3]);
    assert_eq!(file.offsets(), vec![0, 4, 4, 7]);
    assert_eq!(
        file.tokens().iter().collect::<Vec<_>>(),
        vec![2, 10, 65_535, 0, 2, 7, 8]
    );
    let documents: Vec<Vec<u32>> = file.documents().map(|doc| doc.to_vec()).collect();
    assert_eq!(documents, docs);

    // Header 128 + 7 ids * 2 bytes = 142, padded to 144, + 4 offsets * 8 = 176,
    // + 3 labels * 4 = 188, + class count 4 = 192, + names (4+3) + (4+3) + (4+5) = 215.
    assert_eq!(fs::metadata(&path).unwrap().len(), 215);
}

#[test]
fn round_trip_u32_without_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let docs = vec![vec![2, 65_536, 70_000], vec![2, 69_999]];
    write_file(&path, 70_000 + 1, &docs, None, &[]);

    let file = TokenFile::open(&path, None).unwrap();
    assert_eq!(file.element_width(), 4);
    assert_eq!(file.n_documents(), 2);
    assert_eq!(file.n_tokens(), 5);
    assert_eq!(file.document(0).unwrap().to_vec(), docs[0]);
    assert_eq!(file.document(1).unwrap().to_vec(), docs[1]);
    assert_eq!(file.document(0).unwrap().get(2), Some(70_000));
    assert_eq!(file.document(0).unwrap().get(3), None);
    assert_eq!(file.label(0), None);
    assert!(file.classes().is_empty());
    // Header 128 + 5 ids * 4 bytes = 148, padded to 152, + 3 offsets * 8 = 176.
    assert_eq!(fs::metadata(&path).unwrap().len(), 176);
}

#[test]
fn token_slice_sub_view() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 100, &[vec![2, 11, 12, 13, 14]], None, &[]);
    let file = TokenFile::open(&path, None).unwrap();
    let doc = file.document(0).unwrap();
    assert_eq!(doc.slice(1, 4).unwrap().to_vec(), vec![11, 12, 13]);
    assert!(doc.slice(4, 6).is_none());
    assert!(doc.slice(3, 2).is_none());
    let mut out = [0u32; 5];
    doc.copy_to(&mut out);
    assert_eq!(out, [2, 11, 12, 13, 14]);
}

#[test]
fn mismatched_hash_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 10, &[vec![2, 3]], None, &[]);
    let error = TokenFile::open(&path, Some(HASH_B)).err().unwrap();
    assert!(
        matches!(&error, TokenFileError::VocabMismatch { expected, found, .. }
            if expected == HASH_B && found == HASH_A),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(HASH_A), "{message}");
    assert!(message.contains(HASH_B), "{message}");
}

#[test]
fn truncated_file_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 10, &[vec![2, 3, 4], vec![2, 5]], None, &[]);
    let full = fs::read(&path).unwrap();
    // 128 + 5 * 2 = 138, padded to 144, + 3 offsets * 8 = 168.
    assert_eq!(full.len(), 168);

    for cut in [167, 150, 140, HEADER_LEN + 1] {
        fs::write(&path, &full[..cut]).unwrap();
        let error = TokenFile::open(&path, None).err().unwrap();
        assert!(
            matches!(error, TokenFileError::LengthMismatch { expected: 168, actual, .. }
                if actual == cut as u64),
            "cut at {cut}: {error:?}"
        );
        assert!(error.to_string().contains("corpus.tok"), "{error}");
    }

    fs::write(&path, &full[..100]).unwrap();
    let error = TokenFile::open(&path, None).err().unwrap();
    assert!(
        matches!(
            error,
            TokenFileError::LengthMismatch {
                expected: 128,
                actual: 100,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn trailing_bytes_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 10, &[vec![2, 3]], None, &[]);
    let mut bytes = fs::read(&path).unwrap();
    bytes.push(0);
    fs::write(&path, &bytes).unwrap();
    let error = TokenFile::open(&path, None).err().unwrap();
    assert!(
        matches!(error, TokenFileError::LengthMismatch { .. }),
        "{error:?}"
    );
}

#[test]
fn bad_magic_and_version_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 10, &[vec![2, 3]], None, &[]);
    let original = fs::read(&path).unwrap();

    let mut bytes = original.clone();
    bytes[0] = b'X';
    fs::write(&path, &bytes).unwrap();
    let error = TokenFile::open(&path, None).err().unwrap();
    assert!(
        matches!(error, TokenFileError::BadMagic { .. }),
        "{error:?}"
    );

    let mut bytes = original.clone();
    bytes[8] = 2;
    fs::write(&path, &bytes).unwrap();
    let error = TokenFile::open(&path, None).err().unwrap();
    assert!(
        matches!(error, TokenFileError::UnsupportedVersion { version: 2, .. }),
        "{error:?}"
    );
}

#[test]
fn corrupt_offset_table_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 10, &[vec![2, 3, 4], vec![2, 5]], None, &[]);
    let mut bytes = fs::read(&path).unwrap();
    // The offset table starts at 144; entry 1 (end of document 0) is 3, set it to 9.
    bytes[144 + 8] = 9;
    fs::write(&path, &bytes).unwrap();
    let error = TokenFile::open(&path, None).err().unwrap();
    assert!(matches!(error, TokenFileError::Invalid { .. }), "{error:?}");
}

#[test]
fn id_out_of_range_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let mut writer = TokenFileWriter::create(&path, 10, HASH_A, None).unwrap();
    writer.push_document(&[2, 9], None).unwrap();
    let error = writer.push_document(&[2, 4, 10], None).err().unwrap();
    assert!(
        matches!(
            error,
            TokenFileError::IdOutOfRange {
                id: 10,
                document: 1,
                position: 2,
                vocab_size: 10
            }
        ),
        "{error:?}"
    );
    // The rejected document is not written, and the writer stays usable.
    writer.push_document(&[2, 5], None).unwrap();
    writer.finish().unwrap();
    let file = TokenFile::open(&path, None).unwrap();
    assert_eq!(file.n_documents(), 2);
    assert_eq!(file.document(1).unwrap().to_vec(), vec![2, 5]);
}

#[test]
fn label_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let classes = Some(vec!["neg".to_string(), "pos".to_string()]);
    let mut writer = TokenFileWriter::create(&path, 10, HASH_A, classes).unwrap();
    let error = writer.push_document(&[2], None).err().unwrap();
    assert!(
        matches!(error, TokenFileError::MissingLabel { document: 0 }),
        "{error:?}"
    );
    let error = writer.push_document(&[2], Some(2)).err().unwrap();
    assert!(
        matches!(
            error,
            TokenFileError::LabelOutOfRange {
                label: 2,
                n_classes: 2,
                ..
            }
        ),
        "{error:?}"
    );

    let mut writer = TokenFileWriter::create(&path, 10, HASH_A, None).unwrap();
    let error = writer.push_document(&[2], Some(0)).err().unwrap();
    assert!(
        matches!(error, TokenFileError::UnexpectedLabel { label: 0, .. }),
        "{error:?}"
    );
}

#[test]
fn invalid_hash_and_vocab_size_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let error = TokenFileWriter::create(&path, 10, "abc", None)
        .err()
        .unwrap();
    assert!(
        matches!(error, TokenFileError::InvalidVocabHash { .. }),
        "{error:?}"
    );
    let upper = HASH_A.to_uppercase();
    let error = TokenFileWriter::create(&path, 10, &upper, None)
        .err()
        .unwrap();
    assert!(
        matches!(error, TokenFileError::InvalidVocabHash { .. }),
        "{error:?}"
    );
    let error = TokenFileWriter::create(&path, 0, HASH_A, None)
        .err()
        .unwrap();
    assert!(
        matches!(error, TokenFileError::InvalidVocabSize { vocab_size: 0 }),
        "{error:?}"
    );
}

#[test]
fn tmp_file_renamed_on_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let tmp = dir.path().join("corpus.tok.tmp");
    let mut writer = TokenFileWriter::create(&path, 10, HASH_A, None).unwrap();
    writer.push_document(&[2, 3], None).unwrap();
    assert!(tmp.exists());
    assert!(!path.exists());
    let written = writer.finish().unwrap();
    assert_eq!(written, path);
    assert!(path.exists());
    assert!(!tmp.exists());
}

#[test]
fn dropped_writer_removes_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let tmp = dir.path().join("corpus.tok.tmp");
    let mut writer = TokenFileWriter::create(&path, 10, HASH_A, None).unwrap();
    writer.push_document(&[2, 3], None).unwrap();
    drop(writer);
    assert!(!tmp.exists());
    assert!(!path.exists());
}

#[test]
fn empty_corpus_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    write_file(&path, 10, &[], None, &[]);
    let file = TokenFile::open(&path, Some(HASH_A)).unwrap();
    assert_eq!(file.n_documents(), 0);
    assert_eq!(file.n_tokens(), 0);
    assert!(file.tokens().is_empty());
    assert!(file.lengths().is_empty());
}

#[test]
fn corrupted_id_rejected_on_open() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("corpus.tok");
    let hash = "a".repeat(64);
    let mut writer = TokenFileWriter::create(&path, 50, &hash, None).expect("create");
    writer.push_document(&[2, 10, 49], None).expect("push");
    writer.finish().expect("finish");

    // The ids start right after the fixed header; overwrite the second id with 0xffff.
    let mut bytes = std::fs::read(&path).expect("read back");
    let second_id = HEADER_LEN + 2;
    bytes[second_id..second_id + 2].copy_from_slice(&0xffffu16.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write corrupted");

    let error = TokenFile::open(&path, None)
        .err()
        .expect("an out-of-range id is rejected")
        .to_string();
    assert!(error.contains("id 65535"), "{error}");
    assert!(error.contains("corpus.tok"), "{error}");
}
