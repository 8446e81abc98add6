"""Source images of counterfactual edits, matched to the group they fill on its strongest proxy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from fairloop.data.synthfaces import ATTRIBUTES, sample_attributes
from fairloop.tools import sources
from fairloop.generators import GenerationRequest, make_generator
from fairloop.tools.sources import plan_sources

VOCAB = list(ATTRIBUTES)
NO_GRAY_MAN = "a realistic portrait photo of a man without gray hair"


def biased_table(n: int = 6000, keep_rare: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """SynthFaces attributes where gray hair means "man": rare groups keep ``keep_rare`` of their rows."""
    rng = np.random.default_rng(seed)
    table = sample_attributes(n, rng)
    table.index = [f"{k:06d}.jpg" for k in range(n)]
    rare = (table["Male"] == 1) != (table["Gray_Hair"] == 1)
    return table[~rare | (rng.random(n) < keep_rare)]


def realised(table: pd.DataFrame, batches, proxy) -> pd.Series:
    """The proxy's value in each image the batches ask for."""
    values = []
    for batch in batches:
        base = table.loc[list(batch.source_ids), proxy.attribute].to_numpy()
        values += [proxy.value] * batch.n if batch.prompt != NO_GRAY_MAN else base.tolist()
    return pd.Series(values)


def test_edits_of_gray_haired_men_are_as_young_as_real_men_without_gray_hair():
    table = biased_table()
    batches, proxy = plan_sources(table, target="Male", label=1, description=NO_GRAY_MAN, n=800,
                                  vocabulary=VOCAB, rng=np.random.default_rng(1))
    real = table[(table["Male"] == 1) & (table["Gray_Hair"] == 0)]
    gray_men = table[(table["Male"] == 1) & (table["Gray_Hair"] == 1)]
    assert proxy is not None and (proxy.attribute, proxy.value) == ("Young", 1)
    assert proxy.group_rate == pytest.approx(real["Young"].mean()) and proxy.source_rate < 0.35
    assert sum(b.n for b in batches) == 800 and all(len(b.source_ids) == b.n for b in batches)
    ids = [i for b in batches for i in b.source_ids]
    assert table.loc[ids, "Gray_Hair"].eq(1).all()   # every source is one the edit changes
    assert abs(realised(table, batches, proxy).mean() - proxy.group_rate) <= 1 / 800 + 1e-9
    # young gray-haired men are selected first, each for at most MAX_REUSE images ...
    young = [i for i in ids if table.at[i, "Young"] == 1]
    assert max(Counter(young).values()) <= sources.MAX_REUSE
    assert proxy.selected == len(young) == min(round(proxy.group_rate * 800),
                                               sources.MAX_REUSE * gray_men["Young"].sum())
    # ... and only the rest are old men made young, the images that change two attributes
    assert proxy.changed == round(proxy.group_rate * 800) - proxy.selected > 0
    assert [b.prompt for b in batches] == [NO_GRAY_MAN, NO_GRAY_MAN + ", who is young"]
    assert batches[1].n == proxy.changed and table.loc[list(batches[1].source_ids), "Young"].eq(0).all()


def test_a_proxy_is_matched_by_selection_alone_when_enough_sources_have_its_value():
    table = biased_table(n=12000)
    batches, proxy = plan_sources(table, target="Male", label=1, description=NO_GRAY_MAN, n=200,
                                  vocabulary=VOCAB, rng=np.random.default_rng(0))
    assert proxy is not None and proxy.changed == 0 and [b.prompt for b in batches] == [NO_GRAY_MAN]
    ids = list(batches[0].source_ids)
    assert len(set(ids)) == 200   # enough young gray-haired men: none is used twice
    assert table.loc[ids, "Young"].sum() == proxy.selected == round(proxy.group_rate * 200)


def test_attributes_that_the_edit_fixes_or_the_prompt_names_are_not_proxies():
    table = biased_table()
    for description in (NO_GRAY_MAN + ", who is young", "a man who is young without gray hair"):
        _, proxy = plan_sources(table, target="Male", label=1, description=description, n=400,
                                vocabulary=VOCAB, rng=np.random.default_rng(0))
        assert proxy is None or proxy.attribute != "Young"
    # every gray-haired woman has no other hair colour: the edit sets those, they are no proxy
    _, proxy = plan_sources(biased_table(n=12000), target="Male", label=0, description="a woman with gray hair", n=400,
                            vocabulary=VOCAB, rng=np.random.default_rng(0))
    assert proxy is not None and proxy.attribute == "Young" and proxy.value == 0


def test_a_plan_is_left_alone_when_the_filled_group_is_too_small_to_measure():
    table = biased_table(keep_rare=0.0)
    few = table[(table["Male"] == 1)].index[: sources.MIN_GROUP - 1]
    table.loc[few, "Gray_Hair"] = 0
    batches, proxy = plan_sources(table, target="Male", label=1, description=NO_GRAY_MAN, n=50,
                                  vocabulary=VOCAB, rng=np.random.default_rng(0))
    assert proxy is None and len(batches) == 1 and batches[0].n == 50 and batches[0].prompt == NO_GRAY_MAN


def test_more_images_than_sources_cycle_through_them_and_no_sources_mean_text_to_image():
    table = biased_table(n=400)
    gray_men = table[(table["Male"] == 1) & (table["Gray_Hair"] == 1)]
    batches, _ = plan_sources(table, target="Male", label=1, description=NO_GRAY_MAN, n=3 * len(gray_men),
                              vocabulary=VOCAB, rng=np.random.default_rng(0))
    ids = [i for b in batches for i in b.source_ids]
    assert len(ids) == 3 * len(gray_men) and set(ids) == set(gray_men.index)
    batches, proxy = plan_sources(table.iloc[:0], target="Male", label=1, description=NO_GRAY_MAN, n=5,
                                  vocabulary=VOCAB, rng=np.random.default_rng(0))
    assert proxy is None and [(b.n, b.source_ids) for b in batches] == [(5, ())]


def test_the_render_oracle_realises_the_matched_batches(synth_data, tmp_path, monkeypatch):
    """Through the real parser and renderer: the variant's images show the proxy, the others keep it."""
    monkeypatch.setattr(sources, "MIN_GROUP", 5)   # the fixture's training split has 6 gray-haired women
    monkeypatch.setattr(sources, "MAX_REUSE", 0)   # matched by the edit alone: the variant batch is rendered
    description = "a realistic portrait photo of a woman with gray hair"
    train = synth_data.split("train").table
    batches, proxy = plan_sources(train, target="Male", label=0, description=description, n=24,
                                  vocabulary=synth_data.attributes, rng=np.random.default_rng(0))
    assert proxy is not None and len(batches) == 2
    shown = []
    for k, batch in enumerate(batches):
        request = GenerationRequest(prompt=batch.prompt, n=batch.n, label=0, target="Male",
                                    source_ids=batch.source_ids, seed=k)
        rows = make_generator("render").generate(request, tmp_path, sources=synth_data).rows
        assert all(r["attributes"]["Gray_Hair"] == 1 and r["attributes"]["Male"] == 0 for r in rows)
        if k == 1:
            assert all(r["attributes"][proxy.attribute] == proxy.value for r in rows)
        shown += [r["attributes"][proxy.attribute] for r in rows]
    assert abs(np.mean(shown) - proxy.group_rate) <= 1 / 24 + 1e-9


def test_the_protected_attribute_is_never_matched():
    """Edits towards "a young man" would otherwise copy the biased split's gray-hair rate of young men."""
    table = biased_table()
    kwargs = dict(target="Male", label=1, description="a young man", n=400, vocabulary=VOCAB)
    _, free = plan_sources(table, **kwargs, rng=np.random.default_rng(0))
    _, guarded = plan_sources(table, **kwargs, rng=np.random.default_rng(0), protected="Gray_Hair")
    assert free is not None and free.attribute == "Gray_Hair"
    assert guarded is None or guarded.attribute != "Gray_Hair"
