from datacreek_assets.ingest.chunking import chunk_text, drop_exact_duplicates, minilm_token_counter, split_sentences

TEXT = " ".join(f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(120))


def test_chunks_respect_the_token_budget_in_model_tokens():
    count = minilm_token_counter()
    chunks = chunk_text("d", TEXT, max_tokens=64, overlap_tokens=16)
    assert len(chunks) > 5
    for c in chunks:
        assert count(c.text) <= 64
        assert c.n_tokens == sum(count(s) for s in split_sentences(c.text))


def test_consecutive_chunks_overlap_by_whole_sentences():
    chunks = chunk_text("d", TEXT, max_tokens=64, overlap_tokens=16)
    for a, b in zip(chunks, chunks[1:]):
        last = split_sentences(a.text)[-1]
        assert b.text.startswith(last)


def test_overlong_sentence_is_split_on_words():
    chunks = chunk_text("d", "word " * 1000, max_tokens=50, overlap_tokens=0)
    assert all(c.n_tokens <= 50 for c in chunks) and len(chunks) >= 20


def test_chunk_ids_are_stable_and_duplicates_are_dropped():
    a = chunk_text("a.txt", "Alpha beta. Gamma delta.")
    b = chunk_text("b.txt", "Alpha beta. Gamma delta.")
    assert a == chunk_text("a.txt", "Alpha beta. Gamma delta.")
    assert a[0].chunk_id != b[0].chunk_id  # ids are per document
    kept, removed = drop_exact_duplicates(a + b)
    assert kept == a and removed == 1


def test_paragraph_breaks_survive_chunking():
    # a member's name on its own line stays a heading, not the end of the previous sentence
    text = "Intro sentence one. Intro sentence two.\n\ndumps\n\nSerialize obj to a str. It is fast."
    [chunk] = chunk_text("d.md", text, max_tokens=200, count_tokens=lambda s: len(s.split()))
    assert chunk.text == "Intro sentence one. Intro sentence two.\n\ndumps\n\nSerialize obj to a str. It is fast."
