"""Tests for stage 02 (02_preprocess.py over bmwlm.clean): every cleaning rule on hand-written
fixtures (it removes the boilerplate and keeps real content), normalisation, filters, duplicates,
the split, the report, the CLI, and a check over the shared corpus of real articles (skipped when
it is absent). Bad input (damaged lines, other languages, unfinished scrapes ...) is in
test_clean_bad_input.py.

All fixture text below is made up for these tests (fictional people, numbers and wording)."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bmwlm.clean.dedup import cross_near_duplicates, find_near_duplicates, jaccard, shingles
from bmwlm.clean.language import LanguageDetector
from bmwlm.clean.pipeline import preprocess
from bmwlm.clean.records import body_of, build_record, normalize_title
from bmwlm.clean.rules import RULE_NAMES, RULES, clean_text
from bmwlm.clean.split import split_articles
from bmwlm.clean.text import normalize_unicode, split_paragraphs
from conftest import ROOT

SCRIPT = ROOT / "02_preprocess.py"


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


def run_02(*args: str) -> subprocess.CompletedProcess:
    """02_preprocess.py as a user runs it."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def clean(*paragraphs: str) -> str:
    return clean_text("\n\n".join(paragraphs))[0]


def paras(text: str) -> list[str]:
    return text.split("\n\n") if text else []


# A paragraph of ordinary press-release prose, long enough to survive --min-chars.
STORY = (
    "Munich. The BMW Group is opening a new test centre for battery cells at its research campus "
    "in the north of the city. Engineers will examine how cylindrical cells behave over thousands "
    "of charging cycles, in heat and in cold, before the cells go into series production. "
    "The centre employs about 120 specialists and will run around the clock from next spring."
)
STORY_2 = (
    "\"We want to understand every cell before it reaches a customer,\" said Dr Lena Hartmann, head "
    "of cell testing. The new halls cover 9,000 square metres and were built on the site of a "
    "former logistics warehouse, which was dismantled and recycled almost entirely."
)


# ---------------------------------------------------------------------------------------------
# Unicode and whitespace
# ---------------------------------------------------------------------------------------------


def test_normalize_unicode_maps_compatibility_characters_and_keeps_euro_dash_trademark():
    text = "ﬁve CO₂ targets\u00a0for € 5\u202fbillion – MotoGP™ in 20 m² “quoted” it’s"
    out = normalize_unicode(text)
    assert out == "five CO2 targets for € 5 billion – MotoGP™ in 20 m² \"quoted\" it's"


def test_normalize_unicode_drops_invisible_characters_and_odd_hyphens():
    assert normalize_unicode("pre\u00adproduction\u200b plug\u2011in") == "preproduction plug-in"


def test_split_paragraphs_collapses_whitespace_and_drops_empty_lines():
    text = "  First   paragraph\twith tabs. \n\n\n \u00a0 \nSecond line\nThird line  "
    assert split_paragraphs(normalize_unicode(text)) == [
        "First paragraph with tabs.", "Second line", "Third line",
    ]


def test_clean_text_joins_paragraphs_with_one_blank_line():
    assert clean(STORY, "", "   ", STORY_2) == f"{STORY}\n\n{STORY_2}"


# ---------------------------------------------------------------------------------------------
# Contact blocks
# ---------------------------------------------------------------------------------------------

CONTACT_LINES = [
    "BMW Group Corporate Communications",
    "Dr. Mara Lindqvist, Spokesperson Battery Technology",
    "Telephone: +49-89-382-11111",
    "Jonas Petrescu, Head of Communications Research and Development",
    "Mobile: +49 151 601 22222",
    "E-mail: jonas.petrescu@example-press.com",
    "Web: www.press.bmwgroup.com/canada",
]


@pytest.mark.parametrize("marker", [
    "In case of queries, please contact:",
    "In case of queries please contact:",
    "If you have any questions, please contact:",
    "If you have any further questions, please contact:",
    "In the event of enquiries please contact:",
    "In the event of enquiries, please contact:",
    "For further information please contact:",
    "For further information, please contact",
    "For media inquiries, please contact:",
    "Press contact",
    "Press contacts:",
    "Media contact:",
    "Bei Rückfragen wenden Sie sich bitte an:",
])
def test_contact_block_is_removed_from_each_marker_wording(marker):
    out = clean(STORY, marker, *CONTACT_LINES, STORY_2)
    assert paras(out) == [STORY, STORY_2]


def test_contact_block_marker_with_names_on_the_same_line():
    out = clean(STORY, "In case of queries, please contact: Product Communications MINI, Tilda Ask")
    assert out == STORY


def test_contact_block_without_marker_starting_at_the_communications_line():
    out = clean(STORY, *CONTACT_LINES)
    assert out == STORY


def test_contact_block_takes_the_name_before_a_phone_line():
    out = clean(STORY, "Ruth Okafor, Communications Plant Dingolfing", "Press website: www.press.bmwgroup.com/austria")
    assert out == STORY


def test_contact_marker_at_the_end_of_a_text_paragraph_is_cut_off():
    tail = " In the event of enquiries please contact:"
    out = clean(STORY + tail, "BMW Group, Corporate and Product Communications", "Telephone: +49-89-382-33333")
    assert out == STORY


def test_contact_block_stops_at_the_next_real_paragraph():
    out = clean(STORY, "If you have any questions, please contact:", "Corporate Communications",
                "Oskar Brandt, Spokesperson Plant Leipzig", "Telephone: +49-(0)341-445-44444",
                "BMW Group Plant Example", STORY_2)
    # the heading-like name line is kept because a real paragraph, not a contact line, follows it
    assert paras(out) == [STORY, "BMW Group Plant Example", STORY_2]


def test_contact_rule_keeps_people_and_departments_mentioned_in_sentences():
    text = [
        "Munich. Corporate Communications at BMW AG is reorganising its press teams from 1 March.",
        "Anna Berg will take over as Head of Communications for the plants in Bavaria. She previously "
        "led the press office of BMW Motorrad.",
        "Felix Aydin, Head of Design BMW Motorrad:",
        "\"The new bike had to look light even when it stands still.\"",
        "For further information on the exhibition, visitors can ask at the museum desk.",
    ]
    assert paras(clean(*text)) == text


def test_comms_signature_glued_to_a_paragraph_is_removed():
    out = clean("BMW Motorrad Corporate Communications The rally starts in the Carpathians next summer.",
                "The riders reached the finish in the evening. BMW Group Corporate Communications")
    assert paras(out) == ["The rally starts in the Carpathians next summer.",
                          "The riders reached the finish in the evening."]


# ---------------------------------------------------------------------------------------------
# Company boilerplate
# ---------------------------------------------------------------------------------------------

COMPANY = [
    "The BMW Group",
    "With its five brands BMW, MINI, Rolls-Royce, BMW Motorrad and BMW M, the BMW Group is the world's "
    "leading premium manufacturer of cars and motorbikes and also offers premium mobility services. "
    "The BMW Group production network comprises 32 production sites in 15 countries.",
    "In 2031, the BMW Group sold about 2.61 million passenger vehicles and more than 230,500 motorcycles "
    "worldwide. The profit before tax for the financial year 2031 came to € 12.3 billion on revenues of "
    "€ 150.2 billion. At 31 December 2031, the BMW Group had a workforce of 161,250 employees.",
    "The success of the BMW Group has been founded on long-term thinking and responsible action for "
    "decades. Sustainability runs through the whole value chain, from the mine to the recycling yard.",
]


def test_company_boilerplate_paragraphs_are_removed():
    assert clean(STORY, *COMPANY, STORY_2) == f"{STORY}\n\n{STORY_2}"


def test_company_boilerplate_merged_into_one_paragraph_is_removed_from_it():
    merged = "The plant builds 1,100 cars a day. " + " ".join(COMPANY)
    assert clean(merged) == "The plant builds 1,100 cars a day."


def test_company_rule_keeps_sentences_about_the_bmw_group():
    text = [
        "In 2031, the BMW Group sold 2.61 million vehicles, a new record for the company.",
        "The success of the BMW Group in China depends on local development teams, said the CEO.",
        "With four strong brands, we can serve customers from the city car to the luxury limousine.",
        "The BMW Group is the largest employer in the region.",
    ]
    assert paras(clean(*text)) == text


# ---------------------------------------------------------------------------------------------
# Consumption / CO2
# ---------------------------------------------------------------------------------------------


def test_co2_summary_lines_are_removed_in_english_and_german():
    out = clean(
        STORY,
        "CO2 Emissions & Consumption: BMW iX9 xDrive70: energy consumption combined: 19.4–17.2 kWh/100 km (WLTP); "
        "CO2 emissions combined: 0 g/km; CO2 class: A",
        "CO₂ Emissions & Consumption: BMW M9 Sedan: Energieverbrauch kombiniert: 11,3 l/100 km (WLTP); "
        "CO₂-Emissionen kombiniert: 257 g/km (WLTP); CO₂-Klasse: G",
    )
    assert out == STORY


def test_standalone_consumption_data_lines_are_removed():
    out = clean(
        STORY,
        "**Fuel consumption and emission data:",
        "BMW X9 M70: fuel consumption combined: 12.8 l/100 km; CO2 emissions combined: 291 g/km (WLTP); CO2 class: G",
        "MINI Rover E: Electricity consumption combined: 16,2 – 15,0 kWh/100 km according to WLTP; CO2 Class: A",
        "BMW iX9 (combined, WLTP (EnVKV): energy consumption 18.1 kWh/100 km; CO2 emissions: 0 g/km; CO2 class: A) "
        "BMW iX9 M70 (combined, WLTP (EnVKV): energy consumption 20.4 kWh/100 km; CO2 emissions: 0 g/km; CO2 class: A)",
        "Power consumption WLTP combined (kWh/100 km)",
        STORY_2,
    )
    assert paras(out) == [STORY, STORY_2]


def test_consumption_figures_in_brackets_are_cut_out_of_a_sentence_with_their_asterisk():
    out = clean(
        "The winner receives the new BMW M9 CS (fuel consumption combined: 11.0 l/100 km; CO2 emissions "
        "combined: 250 g/km according to WLTP, CO2 class: G)* in Frozen Blue. It will be handed over in May."
    )
    assert out == "The winner receives the new BMW M9 CS in Frozen Blue. It will be handed over in May."


def test_nested_brackets_go_with_the_consumption_group():
    out = clean("It comes as the BMW iX9 xDrive50 (power consumption combined according to WLTP: 20.1 kWh/100 km "
                "(62 miles); CO2 class: A) and later as an M model.")
    assert out == "It comes as the BMW iX9 xDrive50 and later as an M model."


def test_labelled_figures_at_the_end_of_a_sentence_are_removed_and_the_prose_kept():
    out = clean("The car goes on sale in June and costs from 61,000 euros. Fuel consumption combined: "
                "7.1 l/100 km; CO2 emissions combined: 161 g/km.")
    assert out == "The car goes on sale in June and costs from 61,000 euros."


def test_prose_sentence_quoting_a_consumption_figure_is_dropped_whole():
    out = clean("The new model is quicker than before. A consumption of only 14.9 kWh/100 km (WLTP) makes it "
                "the most efficient car of its class. Deliveries start in March.")
    assert out == "The new model is quicker than before. Deliveries start in March."


def test_long_co2_emission_information_disclaimer_is_removed():
    out = clean(
        STORY,
        "CO2 emission information.",
        "The following applies to consumption figures for vehicles with new type approval: the figures for "
        "fuel consumption, CO2 emissions and power consumption were measured by the WLTP procedure.",
        "Further details on the official fuel consumption figures and the official specific CO2 emissions of "
        "new cars are given in the guideline published by DAT at its offices and online.",
        STORY_2,
    )
    assert paras(out) == [STORY, STORY_2]


def test_co2_disclaimer_without_its_heading_is_removed():
    out = clean(
        STORY,
        "The values of fuel consumption and CO2 emissions shown were determined according to the European "
        "test procedure valid at the time of type approval. The figures refer to a car with basic configuration "
        "in Germany. Further details of the official fuel consumption and the official specific CO2 emissions "
        "of new cars are given in the handbook available at every dealer.",
    )
    assert out == STORY


def test_contact_block_collapsed_into_one_line_is_removed():
    out = clean(STORY + " In case of queries, please contact: BMW Group Corporate Communications Jane Roe, "
                "Product Communication Telephone: +49-89-382-12345 Email: jane.roe@example.com")
    assert out == STORY


def test_contact_block_with_short_labels():
    out = clean(STORY, "Press contact", "Jane Roe", "T: +49 89 382 12345", "M: +49 176 601 12345",
                "jane.roe@example.com")
    assert out == STORY


def test_consumption_disclaimers_are_removed():
    out = clean(
        STORY,
        "All model variants, equipment levels, technical data and consumption figures described here refer to "
        "the German market. Energy consumption and emission data follow the German Passenger Car Energy "
        "Consumption Labelling Ordinance (EnVKV).",
        "*As this is a pre-series model, consumption data for the new BMW iX9 is not yet available.",
        STORY_2,
    )
    assert paras(out) == [STORY, STORY_2]


def test_consumption_rules_keep_sentences_about_co2_targets_and_range():
    text = [
        "The BMW Group wants to cut the CO2 emissions of its vehicles by 40 per cent per kilometre by 2035.",
        "With a range of up to 650 kilometres in the WLTP cycle, the car is ready for long trips.",
        "Fuel consumption was the deciding factor in the race: the team needed one stop fewer.",
        "All technical figures are provisional until production starts.",
    ]
    assert paras(clean(*text)) == text


def test_footnote_asterisks_are_stripped_from_model_names():
    out = clean("The BMW iX3* and the BMW X5 xDrive50e** are on show, next to the MINI Cooper E*,**.")
    assert out == "The BMW iX3 and the BMW X5 xDrive50e are on show, next to the MINI Cooper E."


def test_footnote_asterisk_at_paragraph_start_leaves_the_footnote_text():
    assert clean("* Available in selected markets only.") == "Available in selected markets only."


# ---------------------------------------------------------------------------------------------
# Links, e-mail, phone numbers, social media, page furniture
# ---------------------------------------------------------------------------------------------


def test_link_pointer_sentences_and_link_lines_are_removed():
    out = clean(
        STORY + " For more information, please visit: https://www.example-festival.org/en",
        "Photos and press kits for the new scooters are waiting in the BMW Group PressClub at "
        "www.press.bmwgroup.com/uk.",
        "https://www.press.bmwgroup.com/uk/article/detail/T0999999EN",
        "Livestream (English): https://www.example-live.com/en/",
        "Further information on the exhibition programme can be found here.",
        STORY_2,
    )
    assert paras(out) == [STORY, STORY_2]


def test_links_inside_a_sentence_are_shortened_to_the_host():
    out = clean("The boards are sold in the online store https://shop.example-boards.com/bmw/edition priced at "
                "EUR 2,990. They ship in spring.")
    assert out == ("The boards are sold in the online store shop.example-boards.com priced at EUR 2,990. "
                   "They ship in spring.")


def test_link_in_brackets_is_removed():
    assert clean("Day tickets are on sale in the ticket shop (www.example-golf.com/tickets).") == \
        "Day tickets are on sale in the ticket shop."


def test_sentences_with_email_addresses_or_phone_numbers_are_removed():
    out = clean("Tickets cost 20 euros. Groups can book by e-mail to groups@example-museum.de. "
                "The museum opens at 10:00.",
                "Collectors can call the auction house on +44 20 7946 0123 for a viewing. The sale starts on Friday.")
    assert paras(out) == ["Tickets cost 20 euros. The museum opens at 10:00.", "The sale starts on Friday."]


def test_phone_rule_keeps_percentages_race_gaps_and_teasers():
    text = [
        "+++ New record for BMW M +++ Sales up +7.9% +++",
        "Deliveries rose by +2.4% to 1,234,567 vehicles (2030: 1,205,432).",
        "Weerts finished second, +0.412 seconds behind the winner.",
    ]
    assert paras(clean(*text)) == text


def test_social_media_follow_lines_are_removed():
    out = clean(STORY,
                "The BMW Group's art programme, with news and background stories, can be followed on Instagram "
                "at @ExampleArtHandle.",
                "Instagram: @ExampleArtHandle",
                STORY_2)
    assert paras(out) == [STORY, STORY_2]


def test_social_media_rule_keeps_mentions_of_channels():
    text = ["The film will be shown on BMW's YouTube and LinkedIn channels from Monday.",
            "The artist Kim Novak-Lee (@kimnl) painted the car live on stage."]
    assert paras(clean(*text)) == text


def test_page_furniture_and_media_ids_are_removed():
    out = clean(
        "– Check against delivery –",
        STORY,
        "Article Media Material.",
        "P90512345",
        "The new BMW iX9 in Alpine White (P90512346) at the launch.",
        "Downloads.",
        "This article in other PressClubs",
        "Germany",
        "United Kingdom",
        STORY_2,
    )
    assert paras(out) == [STORY, "The new BMW iX9 in Alpine White at the launch.", STORY_2]


def test_separator_lines_are_dropped():
    assert clean(STORY, "_______________", "***", STORY_2) == f"{STORY}\n\n{STORY_2}"


def test_title_repeated_as_first_line_is_dropped():
    cleaned, _ = clean_text(f"New Battery Centre\n\n{STORY}", title="New  Battery Centre")
    assert cleaned == STORY


# ---------------------------------------------------------------------------------------------
# Statistics per rule
# ---------------------------------------------------------------------------------------------


def test_clean_text_reports_what_each_rule_removed():
    text = "\n\n".join([STORY, "In case of queries, please contact:", *CONTACT_LINES, *COMPANY,
                        "CO2 Emissions & Consumption: BMW iX9: energy consumption combined: 18 kWh/100 km; "
                        "CO2 class: A"])
    cleaned, stats = clean_text(text)
    assert cleaned == STORY
    assert set(stats["rules"]) == set(RULE_NAMES)
    contact = stats["rules"]["contact_block"]
    assert contact["matches"] == 1 and contact["paragraphs"] == 1 + len(CONTACT_LINES)
    assert contact["chars"] == len("In case of queries, please contact:") + sum(map(len, CONTACT_LINES))
    assert stats["rules"]["company_boilerplate"]["paragraphs"] == len(COMPANY)
    assert stats["rules"]["co2_summary"]["paragraphs"] == 1
    assert stats["rules"]["urls"]["chars"] == 0
    assert stats["chars_in"] == len(text) and stats["chars_out"] == len(STORY)


def test_rules_run_in_the_order_of_the_one_explicit_list():
    assert RULE_NAMES == (
        "separator_lines", "page_furniture", "media_ids", "contact_block", "comms_signature", "company_boilerplate",
        "co2_summary", "consumption_heading", "consumption_data", "consumption_sentence", "consumption_disclaimer",
        "footnote_asterisks", "social_media", "link_pointer", "urls", "email_addresses", "phone_numbers",
    )
    # The contact block is found by its phone line and takes the name and role above it. Were the
    # phone rule first, it would take the phone line alone and leave the name behind.
    text = "\n\n".join([STORY, "Jane Roe, Spokesperson Plant Example", "Telephone: +49 89 382 12345"])
    cleaned, stats = clean_text(text)
    assert cleaned == STORY
    assert list(stats["rules"]) == list(RULE_NAMES)
    phone_first = [r for r in RULES if r.name == "phone_numbers"] + [r for r in RULES if r.name != "phone_numbers"]
    assert clean_text(text, rules=phone_first)[0] == f"{STORY}\n\nJane Roe, Spokesperson Plant Example"


# ---------------------------------------------------------------------------------------------
# Records, duplicates, split
# ---------------------------------------------------------------------------------------------

T0 = datetime(2031, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=1)))


def raw_article(i: int, text: str, *, days: int | None = None, title: str | None = None) -> dict:
    return {
        "id": f"T{9000000 + i:07d}EN",
        "url": f"https://www.press.bmwgroup.com/global/article/detail/T{9000000 + i:07d}EN",
        "title": title or f"Test article number {i}",
        "published": (T0 + timedelta(days=i if days is None else days)).isoformat(),
        "teaser": "",
        "category": "Press Release",
        "topics": ["803"],
        "text": text,
        "source": "rss2",
        "fetched_at": "2031-06-01T00:00:00+00:00",
    }


WORDS = ("battery plant engine design rally museum dealer charging sedan touring coupe roadster motorcycle "
         "factory robot paint software sensor tyre brake seat light wheel driver racing season award art "
         "exhibition concert golf tournament student apprentice supplier steel aluminium recycling solar").split()


def unique_text(seed: int, n_words: int = 140) -> str:
    """Distinct filler prose: different seeds share almost no 5-word shingles."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    sentences = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, n_words, 12)]
    return " ".join(sentences)


def test_build_record_puts_the_title_on_the_first_line():
    raw = raw_article(1, STORY, title="  A  “New” Battery Centre for the BMW iX9* ")
    record = build_record(raw, STORY)
    assert record["text"] == f'A "New" Battery Centre for the BMW iX9\n\n{STORY}'
    assert record["text"].split("\n")[0] == record["title"]
    assert record["n_chars"] == len(record["text"])
    assert set(record) == {"id", "published", "title", "text", "category", "topics", "url", "n_chars"}


def test_shingles_and_jaccard():
    a = shingles("one two three four five six")
    assert len(a) == 2
    assert jaccard(a, a) == 1.0
    assert jaccard(a, shingles("seven eight nine ten eleven twelve")) == 0.0
    assert len(shingles("too short")) == 1


def test_find_near_duplicates_keeps_the_first_of_a_pair_and_reports_jaccard():
    base = unique_text(1, 300)
    edited = base.replace("Battery", "Cell", 1) + " One more closing sentence."
    docs = [("long", edited), ("short", base), ("other", unique_text(2, 300))]
    dropped = find_near_duplicates(docs, 0.8)
    assert list(dropped) == ["short"]
    kept, sim = dropped["short"]
    assert kept == "long" and 0.8 <= sim < 1.0
    assert find_near_duplicates(docs, 0.999) == {}


def test_min_length_drop(detector):
    records = [raw_article(0, STORY), raw_article(1, "Too short to train on.")]
    train, val, report = preprocess(records, min_chars=100, val_fraction=0.0, detector=detector, progress=False)
    assert [r["id"] for r in train + val] == [records[0]["id"]]
    assert report["dropped"]["too_short"]["articles"] == [{"id": records[1]["id"], "chars": 22}]


def test_exact_and_near_duplicates_are_removed_keeping_the_longest(detector):
    body = unique_text(7, 300)
    records = [
        raw_article(0, body),
        raw_article(1, body, title="Same text, other title"),                # exact duplicate, newer
        raw_article(2, body + " " + unique_text(8, 12)),                      # near duplicate, longer
        raw_article(3, unique_text(9, 300)),
    ]
    train, val, report = preprocess(records, min_chars=50, val_fraction=0.0, detector=detector, progress=False)
    kept = {r["id"] for r in train + val}
    assert kept == {records[2]["id"], records[3]["id"]}
    exact = report["dropped"]["exact_duplicate"]["pairs"]
    near = report["dropped"]["near_duplicate"]["pairs"]
    assert exact == [{"id": records[0]["id"], "duplicate_of": records[1]["id"]}]  # same length: newest kept
    assert [(p["id"], p["duplicate_of"]) for p in near] == [(records[1]["id"], records[2]["id"])]
    assert near[0]["jaccard"] >= 0.8


def _split_fixture(n: int = 30) -> list[dict]:
    return [build_record(raw_article(i, "x", days=(i * 7) % n), unique_text(100 + i)) for i in range(n)]


def test_chronological_split_puts_the_newest_tenth_in_validation():
    records = _split_fixture(30)
    train, val = split_articles(records, 0.1, "chronological")
    assert len(val) == 3 and len(train) == 27
    newest = sorted(records, key=lambda r: r["published"])[-3:]
    assert {r["id"] for r in val} == {r["id"] for r in newest}
    assert max(r["published"] for r in train) < min(r["published"] for r in val)
    assert [r["published"] for r in train] == sorted(r["published"] for r in train)


def test_chronological_split_compares_dates_across_time_zones():
    early = raw_article(0, "", days=0) | {"published": "2031-03-01T10:00:00+02:00"}   # 08:00 UTC
    late = raw_article(1, "", days=0) | {"published": "2031-03-01T09:00:00+00:00"}    # 09:00 UTC
    train, val = split_articles([late, early], 0.5, "chronological")
    assert [r["id"] for r in val] == [late["id"]]


def test_random_split_is_reproducible_by_seed():
    records = _split_fixture(40)
    first = split_articles(records, 0.25, "random", seed=3)
    again = split_articles(records, 0.25, "random", seed=3)
    other = split_articles(records, 0.25, "random", seed=4)
    ids = lambda split: {r["id"] for r in split[1]}  # noqa: E731
    assert ids(first) == ids(again) and len(ids(first)) == 10
    assert ids(first) != ids(other)


@pytest.mark.parametrize("method", ["chronological", "random"])
def test_split_has_no_id_in_both_parts(method):
    records = _split_fixture(25)
    train, val = split_articles(records, 0.2, method, seed=1)
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert len(train) + len(val) == 25


def test_no_validation_article_has_a_near_duplicate_in_train(detector):
    # two near-copies, one old and one newest: dedup must leave only one of them
    story = unique_text(42, 300)
    records = [raw_article(i, unique_text(200 + i), days=i) for i in range(18)]
    records += [raw_article(50, story, days=1), raw_article(51, story + " Updated at noon.", days=40)]
    train, val, report = preprocess(records, min_chars=50, val_fraction=0.1, detector=detector, progress=False)
    assert report["checks"]["validation_near_duplicates_in_train"] == []
    leaks = cross_near_duplicates([(r["id"], body_of(r)) for r in val],
                                     [(r["id"], body_of(r)) for r in train], 0.8)
    assert leaks == []
    assert report["dropped"]["near_duplicate"]["count"] == 1


def test_cross_near_duplicates_finds_a_leak():
    story = unique_text(5, 200)
    leaks = cross_near_duplicates([("v1", story + " Extra."), ("v2", unique_text(6, 200))],
                                     [("t1", unique_text(7, 200)), ("t2", story)], 0.8)
    assert [(q, c) for q, c, _ in leaks] == [("v1", "t2")]


# ---------------------------------------------------------------------------------------------
# CLI and report
# ---------------------------------------------------------------------------------------------


def _write_raw(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _tiny_corpus() -> list[dict]:
    boiler = "\n\n".join(["In case of queries, please contact:", *CONTACT_LINES, *COMPANY])
    records = [raw_article(i, f"{unique_text(300 + i)}\n\n{boiler}") for i in range(20)]
    records.append(raw_article(20, "Only a line."))
    records.append(raw_article(21, records[3]["text"], title="A copy"))
    return records


@pytest.fixture(scope="module")
def tokenizer_dir(gpt2_tokenizer_dir, tmp_path_factory) -> Path:
    """The GPT-2 tokenizer saved with save_pretrained, so AutoTokenizer can load it by path."""
    from transformers import GPT2TokenizerFast

    out = tmp_path_factory.mktemp("gpt2-tokenizer")
    GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir).save_pretrained(out)
    return out


def test_cli_end_to_end_writes_loadable_splits_and_a_report(tmp_path, tokenizer_dir):
    raw = _write_raw(tmp_path / "articles.jsonl", _tiny_corpus())
    out = tmp_path / "processed"
    proc = run_02("--in", str(raw), "--out-dir", str(out), "--tokenizer", str(tokenizer_dir), "--min-chars", "200")
    assert proc.returncode == 0, proc.stderr

    import datasets

    ds = datasets.load_dataset("json", data_files={"train": str(out / "train.jsonl"),
                                                   "validation": str(out / "validation.jsonl")})
    assert ds["train"].num_rows == 18 and ds["validation"].num_rows == 2
    row = ds["validation"][0]
    assert row["text"].startswith(row["title"] + "\n\n")
    assert "please contact" not in row["text"] and "four brands" not in row["text"]

    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["articles"] == {"in": 22, "unique_ids": 22, "out": 20, "train": 18, "validation": 2}
    assert report["dropped"]["too_short"]["count"] == 1
    assert report["dropped"]["exact_duplicate"]["count"] == 1
    rules = report["cleaning"]["rules"]
    assert rules["contact_block"]["articles"] == 21 and rules["company_boilerplate"]["articles"] == 21
    assert all({"description", "articles", "matches", "paragraphs", "chars"} <= set(v) for v in rules.values())
    for name in ("train", "validation"):
        split = report["splits"][name]
        assert split["tokens"] > split["articles"] * 50
        assert split["published_min"] <= split["published_max"]
    assert report["splits"]["train"]["published_max"] < report["splits"]["validation"]["published_min"]
    assert report["checks"]["ids_in_both_splits"] == []
    assert report["settings"]["split"] == "chronological" and report["settings"]["min_chars"] == 200
    assert report["settings"]["tokenizer"] == str(tokenizer_dir)
    assert report["settings"]["rules"] == list(RULE_NAMES)


def test_cli_random_split_and_no_tokenizer(tmp_path):
    raw = _write_raw(tmp_path / "a.jsonl", _tiny_corpus())
    for run in ("one", "two"):
        proc = run_02("--in", str(raw), "--out-dir", str(tmp_path / run), "--split", "random", "--seed", "9",
                      "--val-fraction", "0.25", "--tokenizer", "none")
        assert proc.returncode == 0, proc.stderr
    one, two = ((tmp_path / run / "validation.jsonl").read_text() for run in ("one", "two"))
    assert one == two and one.count("\n") == 5
    report = json.loads((tmp_path / "one" / "preprocess_report.json").read_text())
    assert report["splits"]["train"]["tokens"] is None and report["settings"]["tokenizer"] is None


def test_missing_input_exits_1_with_one_line_naming_the_scrape_stage(tmp_path):
    proc = run_02("--in", str(tmp_path / "nope.jsonl"), "--out-dir", str(tmp_path / "out"), "--tokenizer", "none")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "01_scrape.py" in proc.stderr and "nope.jsonl" in proc.stderr
    assert not (tmp_path / "out").exists()


def _help_entries(text: str) -> dict[str, str]:
    """--help's options section as {"--min-chars": "its help text", ...}."""
    entries, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        match = re.match(r"\s{2}(-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(2)
            entries[current] = line
        elif current:
            entries[current] += " " + line.strip()
    return {k: re.sub(r"\s+", " ", v) for k, v in entries.items()}


def test_help_gives_every_option_a_text_and_its_real_default_once():
    proc = run_02("--help")
    assert proc.returncode == 0
    entries = _help_entries(proc.stdout)
    flags = {"--help", "--allow-incomplete", "--verbose"}
    assert set(entries) == flags | {"--in", "--out-dir", "--split", "--seed", "--val-fraction", "--min-chars",
                                    "--max-chars", "--languages", "--near-dup-threshold", "--tokenizer"}
    for option, entry in entries.items():
        assert entry.count("(default:") == (0 if option in flags else 1), entry
        assert "(default: None)" not in entry and "(default: False)" not in entry
    expected = {"--split": "chronological", "--seed": "42", "--val-fraction": "0.1", "--min-chars": "400",
                "--max-chars": "50000", "--languages": "en", "--near-dup-threshold": "0.8",
                "--tokenizer": "smollm2-135m", "--in": "articles.jsonl)"}
    for option, default in expected.items():
        assert re.search(rf"\(default: [^)]*{re.escape(default)}", entries[option]), entries[option]


# ---------------------------------------------------------------------------------------------
# The shared corpus of real articles
# ---------------------------------------------------------------------------------------------


def corpus_to_raw(item: dict) -> dict:
    """A shared-corpus item as 01_scrape.py would have written it."""
    published = datetime.strptime(item["date"], "%Y-%m-%d %H:%M").replace(tzinfo=ZoneInfo("Europe/Berlin"))
    return {
        "id": item["id"],
        "url": f"https://www.press.bmwgroup.com/global/article/detail/{item['id']}",
        "title": item["title"],
        "published": published.isoformat(),
        "teaser": item.get("summary", ""),
        "category": item.get("type", ""),
        "topics": item.get("topics", []),
        "text": "\n\n".join(item["body"]),
        "source": "rss2",
        "fetched_at": "",
    }


@pytest.fixture(scope="module")
def corpus_raw(shared_corpus) -> list[dict]:
    with open(shared_corpus, encoding="utf-8") as fh:
        return [corpus_to_raw(json.loads(line)) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def corpus_cleaned(corpus_raw) -> dict[str, str]:
    return {r["id"]: clean_text(r["text"], title=r["title"])[0] for r in corpus_raw}


LEFTOVERS = {
    "contact marker": re.compile(r"please contact|in case of queries|if you have any questions|in the event of "
                                 r"enquiries|press contact|wenden Sie sich", re.I),
    "company paragraph": re.compile(r"With its (?:\w+ )?brands|based on long-term thinking|had a workforce of", re.I),
    "consumption line": re.compile(r"l\s*/\s*100\s*km|g\s*/\s*km|kWh\s*/\s*100\s*km|CO2 emissions combined|"
                                   r"Energieverbrauch|CO2[\s-]*class|EnVKV", re.I),
    "e-mail address": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+"),
    "+49 phone number": re.compile(r"\+\s?49[\s\d()/.-]{6,}"),
    "link": re.compile(r"https?://|www\.|press\.bmwgroup\.com", re.I),
}


def test_corpus_cleaning_leaves_no_boilerplate(corpus_cleaned):
    found = {name: [i for i, text in corpus_cleaned.items() if rx.search(text)] for name, rx in LEFTOVERS.items()}
    assert found == {name: [] for name in LEFTOVERS}


# Words that appear in boilerplate of any kind. A paragraph without any of them is ordinary text
# that no rule should touch; the measure is the share of those paragraphs' characters that come
# out of the cleaner unchanged (each such paragraph found verbatim in the cleaned article). This
# is stricter than counting characters, because a paragraph that lost one word counts as lost.
# The hint list is broad on purpose: it only has to exclude every paragraph a rule might target.
BOILERPLATE_HINT = re.compile(
    r"contact|quer(?:y|ies)|enquir|inquir|question|communication|spokes|telephone|phone|mobile|e-?mail|"
    r"internet|website|web|http|www\.|\.com|\.de\b|@|\+\s?\d{2}|four brands|long-term thinking|profit before tax|"
    r"workforce|consumption|emission|CO2|CO₂|WLTP|EnVKV|l/100|kWh|g/km|verbrauch|instagram|facebook|youtube|"
    r"linkedin|follow|\*|here\b|information|press|media|download|check against delivery|_{3,}|^\W*$|"
    r"^(?:the |die )?bmw group\W*$|kommunikation|rückfragen|seit jeher|:$",
    re.I,
)


def test_corpus_cleaning_keeps_ordinary_text(corpus_raw, corpus_cleaned):
    total = kept = 0
    lost = []
    for raw in corpus_raw:
        cleaned = set(paras(corpus_cleaned[raw["id"]]))
        title = normalize_title(raw["title"]).casefold()
        for p in split_paragraphs(normalize_unicode(raw["text"])):
            if BOILERPLATE_HINT.search(p) or p.casefold() == title:
                continue
            total += len(p)
            if p in cleaned:
                kept += len(p)
            else:
                lost.append(p)
    share = kept / total
    print(f"\nordinary paragraphs kept unchanged: {share:.4f} of {total} characters; lost: {lost[:5]}")
    assert share >= 0.99


@pytest.fixture(scope="module")
def corpus_preprocessed(corpus_raw, detector) -> tuple[list[dict], list[dict], dict]:
    return preprocess(corpus_raw, detector=detector, progress=False)


def test_corpus_preprocess_figures(corpus_preprocessed):
    train, val, report = corpus_preprocessed
    a, c = report["articles"], report["cleaning"]
    print(f"\narticles in {a['in']}, out {a['out']} (train {a['train']}, validation {a['validation']}); "
          f"dropped {report['dropped']['too_short']['count']} short, {report['dropped']['exact_duplicate']['count']} "
          f"exact, {report['dropped']['near_duplicate']['count']} near duplicates; "
          f"{c['percent_chars_removed']}% of characters removed; {report['timings']}")
    for name, r in c["rules"].items():
        print(f"  {name:24s} articles {r['articles']:4d}  matches {r['matches']:4d}  "
              f"paragraphs {r['paragraphs']:4d}  chars {r['chars']:6d}")
    assert a["out"] == len(train) + len(val) and len(val) == round(0.1 * a["out"])
    assert report["checks"] == {"ids_in_both_splits": [], "validation_near_duplicates_in_train": []}
    assert 2.0 < c["percent_chars_removed"] < 15.0
    assert c["rules"]["contact_block"]["articles"] >= 90 and c["rules"]["co2_summary"]["articles"] >= 90


def test_corpus_language_filter_keeps_every_english_article_and_is_fast(corpus_raw, corpus_preprocessed):
    """A PressClub id ends in its language (T0454734EN); every English article long enough to keep
    stays, and only the others go."""
    train, val, report = corpus_preprocessed
    too_short = {a["id"] for a in report["dropped"]["too_short"]["articles"]}
    english = {r["id"] for r in corpus_raw if r["id"].endswith("EN")} - too_short
    other = {r["id"] for r in corpus_raw if not r["id"].endswith("EN")} - too_short
    kept = {r["id"] for r in train + val}
    dropped = {a["id"] for a in report["dropped"]["other_language"]["articles"]}
    seconds = report["timings"]["language_s"]
    print(f"\nlanguage detection: {report['language']['detected']} in {seconds:.2f} s for "
          f"{sum(report['language']['detected'].values())} articles; dropped {sorted(dropped)}")
    assert english <= kept
    assert dropped == other
    assert seconds < 30  # a loose bound for a shared 2-core machine
