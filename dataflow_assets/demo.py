"""`dataflow demo`: the pre-training text pipeline on real C4 text (../shared/data) or, where that is
absent, on a small corpus written here that exercises every filter; then one LLM stage (a judge score
on the filtered text) on the embedded llama.cpp model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from resources.storage import home

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("DATAFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


GOOD = [
    "The river town grew up around a wooden bridge that was built in the early nineteenth century. Farmers from the surrounding valleys brought their grain to the mill on the east bank, and the market square filled with carts every Saturday morning. When the railway arrived in 1871, the bridge lost much of its traffic, but the town kept its weekly market, which still runs from April to October. Visitors can walk along the old towpath and read the small plaques that explain how the mill wheel worked. A small museum in the old granary shows tools, sacks and ledgers from the busiest years of the mill. The town council repaired the bridge railings in 2019.",
    "Sourdough bread relies on a starter, a mixture of flour and water that hosts wild yeast and lactic acid bacteria. Bakers feed the starter every day so that it stays active, and they use a portion of it to leaven each new batch of dough. The long fermentation gives the bread its slightly sour taste and an open crumb. Most home bakers find that a warm kitchen and a little patience matter more than any special equipment, although a heavy pot with a lid helps the crust. Flour with more protein makes a chewier loaf. A loaf that is cut too early will feel gummy inside, so it should cool on a rack for at least an hour.",
    "Solar panels convert sunlight into electricity through the photovoltaic effect. When light strikes the silicon cells, it frees electrons that flow as a current through the wiring of the panel. The amount of power depends on the angle of the panel, the time of year and the cleanliness of the glass. Many households pair their panels with a battery so that they can use the energy they collect during the day in the evening, when demand on the grid is usually highest. Installers usually check the roof for shade before they recommend a system. In colder regions the panels often work better than people expect, because the cells are more efficient at low temperatures.",
    "The library opened its new reading room last spring after two years of renovation work. Large windows now let natural light fall across the long oak tables, and the shelves along the north wall hold the local history collection. Students come in the afternoon to study, while retired residents often spend the morning with the newspapers. The librarians also run a weekly workshop that teaches people how to search old census records and parish registers for their family history. The building also has a quiet room for people who need to make phone calls. A small cafe near the entrance sells tea, coffee and sandwiches.",
    "Honeybees communicate the location of flowers through a series of movements known as the waggle dance. A forager that has found a rich source of nectar returns to the hive and walks in a figure of eight, shaking her body during the straight part of the run. The direction of that run tells the other bees the angle of the flowers relative to the sun, and its length tells them how far they need to fly. Researchers have decoded these dances to map where colonies gather food. The dance is less precise for flowers that are very close to the hive. Colonies in cities often forage on garden plants, street trees and flowering weeds.",
    "A good hiking boot should fit snugly around the heel while leaving enough room for the toes to move on a steep descent. It is worth trying boots on in the afternoon, when feet are slightly swollen, and wearing the same socks that you plan to use on the trail. New boots need to be broken in on a few short walks before a long trip. Waterproof membranes keep feet dry in wet grass, but they also trap heat, so some walkers prefer lighter shoes in summer. Laces should be tied a little tighter before a long descent. Worn soles lose their grip on wet rock and should be replaced in good time.",
    "The museum's new exhibition traces the history of mapmaking from clay tablets to satellite images. One room displays hand-drawn sea charts used by merchants in the sixteenth century, with coastlines that are remarkably accurate and interiors that are mostly blank. Another room explains how surveyors measured the country with chains and theodolites, walking across hills and marshes for decades. The final section lets visitors compare an old parish map with a modern aerial photograph of the same fields. School groups can borrow a box of surveying tools to try outside. The exhibition will stay open until the end of next year.",
    "Composting turns kitchen scraps and garden waste into a dark, crumbly material that improves the structure of soil. A healthy heap needs a balance of green material, such as vegetable peelings and grass cuttings, and brown material, such as dry leaves and shredded cardboard. Turning the heap every few weeks adds air and speeds up the work of the microbes. After several months the compost can be spread on flower beds, where it helps the soil hold water during dry spells. A heap that smells bad usually has too much green material and too little air. Woody stems break down slowly and are best cut into small pieces first.",
    "The orchestra rehearsed the symphony for three weeks before the opening night of the season. The conductor asked the strings to play the slow movement more quietly than usual, so that the solo oboe could be heard clearly at the back of the hall. During the final rehearsal the percussion section arrived late because of a delayed train, and the players spent the break tuning the timpani. The concert sold out, and the audience called the musicians back to the stage three times. A recording of the performance will be broadcast on the radio next month. The next concert in the series features music for brass and organ.",
    "Learning a second language as an adult takes regular practice rather than occasional long sessions. Many teachers recommend reading short stories and listening to podcasts at a slightly higher level than feels comfortable. Writing a few sentences every day about ordinary events helps learners remember new vocabulary, and speaking with a partner builds the confidence to make mistakes. Progress often feels slow at first, but after a few months most students notice that they understand far more than they can say. Short daily sessions are easier to keep up than long weekly ones. Mistakes are a normal part of learning and teachers treat them as useful information.",
]

OTHER_LANGUAGES = [
    "La ville a construit un nouveau pont au-dessus de la rivière pour remplacer l'ancien ouvrage en bois. Les habitants peuvent désormais traverser à pied ou à vélo, et le marché du samedi attire de nombreux visiteurs venus des villages voisins. Le maire a annoncé que la vieille passerelle sera conservée comme monument historique et que des panneaux expliqueront son histoire aux promeneurs qui longent le quai.",
    "Die Bibliothek der Stadt hat im Frühjahr einen neuen Lesesaal eröffnet. Große Fenster lassen viel Tageslicht herein, und an den langen Holztischen lernen am Nachmittag vor allem Studierende. Die Mitarbeiterinnen bieten jede Woche einen Kurs an, in dem man lernt, alte Kirchenbücher und Volkszählungen nach der Geschichte der eigenen Familie zu durchsuchen. Der Eintritt ist frei, und die Öffnungszeiten wurden verlängert.",
    "El pueblo celebra cada verano una feria en la plaza mayor, donde los agricultores venden frutas, quesos y pan recién hecho. Por la noche, una banda de música toca en el quiosco y los vecinos bailan hasta tarde. Los visitantes pueden recorrer el antiguo molino junto al río y aprender cómo se molía el trigo hace más de cien años, antes de que llegara el ferrocarril a la comarca.",
]

JUNK = [
    # boilerplate / policy / javascript lines (C4)
    "Please enable JavaScript to view this page.\nThis website uses cookies to improve your experience.\nBy continuing you agree to our Terms of Use and Privacy Policy.\nCookie Policy\nAll rights reserved.",
    # lorem ipsum
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Lorem ipsum dolor sit amet again and again for the layout of this page.",
    # spam with repeated lines
    "BUY NOW!!! Best prices on watches!!!\n" * 12,
    # too short
    "Click here.",
    # bullets
    "\n".join(f"• item number {i} in the list" for i in range(1, 15)),
    # code / curly brackets
    "function init() { var x = {a: 1, b: {c: 2}}; if (x.a) { return {ok: true}; } } window.onload = function() { init(); };",
    # symbols / hashtags
    "#deal #sale #promo #win #free #now #best #top #hot #new #follow #like #share #repost #viral #trend " * 3,
    # ellipsis lines
    "\n".join(f"Read more about story number {i}..." for i in range(1, 12)),
    # digits and special characters
    "0043 1234 5678 9999 ### $$$ %%% 12:30 45.67 8900 1111 2222 3333 4444 5555 6666 7777 8888 @@@ &&& ***",
    # repeated n-grams (Gopher repetition)
    "the best cheap hotel deals in town " * 25,
]


def demo_corpus() -> list[dict[str, Any]]:
    """A few dozen documents that exercise every filter: good text, boilerplate, spam, short docs,
    code, other languages, HTML, exact duplicates and near duplicates."""
    docs = [{"text": t, "url": f"https://example.org/good/{i}"} for i, t in enumerate(GOOD)]
    docs += [{"text": f"<p>{GOOD[0]} See <a href='https://example.org/x'>the map</a> &amp; more.</p>", "url": "https://example.org/html"}]
    docs += [{"text": GOOD[1], "url": "https://example.org/copy/1"}, {"text": GOOD[2], "url": "https://example.org/copy/2"}]
    near = GOOD[3].replace("last spring", "last summer").replace("weekly", "monthly")
    docs += [{"text": near, "url": "https://example.org/near/1"}]
    near2 = GOOD[4].replace("rich source", "good source").replace("Researchers", "Scientists")
    docs += [{"text": near2, "url": "https://example.org/near/2"}]
    docs += [{"text": t, "url": f"https://example.org/lang/{i}"} for i, t in enumerate(OTHER_LANGUAGES)]
    docs += [{"text": t, "url": f"https://example.org/junk/{i}"} for i, t in enumerate(JUNK)]
    return docs


def write_demo_corpus(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(d, ensure_ascii=False) for d in demo_corpus()]
    lines.append('{"text": 42, "url": "https://example.org/bad-type"}')  # wrong type -> quarantine
    lines.append('{"url": "https://example.org/no-text"}')  # missing field -> quarantine
    lines.append('{"text": "truncated json line')  # malformed -> quarantine
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def demo_input() -> tuple[Path, str]:
    c4 = shared_data() / "c4_validation_2k" / "c4_validation_2k.parquet"
    if c4.exists():
        return c4, f"real C4 text ({c4})"
    path = write_demo_corpus(home() / "demo" / "corpus.jsonl")
    return path, f"the built-in demo corpus ({path}); ../shared/data is not present"


def run_demo(console, run: Callable, print_summary: Callable, *, llm: bool = True, judge_rows: int = 6) -> int:
    path, what = demo_input()
    console.print(f"[bold]dataflow demo[/]: pre-training text pipeline on {what}")
    summary = run("text_pt", [path])
    print_summary(summary)
    ok = summary.success and summary.invariant_holds()
    console.print(
        f"rows: {summary.records} in = {summary.rows_out} kept + "
        f"{sum(n for s in summary.stages.values() for n in s.dropped.values())} dropped + {summary.quarantined} quarantined"
        f" ({'holds' if summary.invariant_holds() else 'DOES NOT HOLD'})"
    )
    if llm and ok and summary.export:
        import polars as pl

        judge_in = home() / "demo" / "judge_input.jsonl"
        frame = pl.read_parquet(summary.export).head(judge_rows).select("_id", pl.col("text").str.slice(0, 1200))  # ids kept: trace follows a row through both
        judge_in.parent.mkdir(parents=True, exist_ok=True)
        frame.write_ndjson(judge_in)
        console.print(f"[bold]LLM stage[/]: the embedded SmolLM2 model judges {frame.height} filtered documents")
        judged = run("text_judge", [judge_in])
        print_summary(judged)
        ok &= judged.success
        if judged.export:
            out = pl.read_parquet(judged.export)
            cols = [c for c in ("quality_score", "quality_rationale") if c in out.columns]
            console.print(out.select(pl.col("text").str.slice(0, 60), *cols))
    console.print(f'query it: .venv/bin/dataflow sql "select * from text_pt.minhash_dedup limit 5"   (catalog: {home() / "catalog.duckdb"})', highlight=False)
    console.print("browse it: .venv/bin/dataflow ui   (dagster dev on this project's instance)")
    return 0 if ok else 1
