"""Text the model writes about everyday things: a grid of topics × genres for the default SAE's corpus.

The registries carry little present-day everyday prose with a licence that allows it, so the corpus adds what the
default model itself writes when it starts a diary entry, an email, a news report, a how-to, a story or an explainer
on a few hundred everyday topics. The topics are chosen here and kept apart from the hint benchmarks' topics (a test
checks); one topic in ten is held out, whole, for `eval-sae`.

    tinymorph write-corpus OUT                        # OUT/train/written/*.txt and OUT/heldout/written/*.txt
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TOPICS = (
    # home and daily life
    "moving to a new flat", "a leaking roof", "washing the car", "a broken washing machine", "ironing shirts",
    "cleaning out the attic", "a noisy neighbour", "paying the rent", "a power cut", "a new sofa", "a kitchen renovation",
    "a smoke alarm that will not stop", "locking yourself out", "a house plant that keeps dying", "a morning routine",
    "a lost set of keys", "a flat share", "a yard sale", "recycling", "a tidy desk",
    # food and drink
    "making soup", "a birthday cake", "a coffee shop", "a vegetarian diet", "a barbecue", "street food",
    "a picnic in the park", "pizza night", "a food allergy", "making jam", "a pot of tea", "a packed lunch",
    "a dinner with the in-laws", "a new restaurant", "breakfast in bed", "a farmers' market", "spicy food", "a cheese board",
    "chocolate", "a fridge full of leftovers",
    # work and money
    "a job interview", "a first day at work", "working from home", "a difficult boss", "a pay rise", "a team meeting",
    "starting a small business", "a customer complaint", "a night shift", "an office party", "a tax return",
    "saving for a house", "a credit card bill", "a mortgage", "losing a job", "a promotion", "a strike at the factory",
    "a shop closing down", "a performance review", "a commute by train",
    # people and feelings
    "a best friend moving away", "a first date", "a silver anniversary", "a divorce", "a newborn nephew",
    "a grandmother's stories", "an argument between brothers", "a surprise party", "loneliness", "an apology",
    "a long-distance friendship", "a teenager's bedroom", "becoming a father", "a retirement party",
    "meeting old classmates", "a secret admirer", "forgiveness", "stage fright", "homesickness", "a new stepfamily",
    # health and body
    "a broken arm", "a cold that will not go away", "a sleepless night", "a visit to the optician", "running a marathon",
    "a yoga class", "back pain", "a healthy diet", "a hay fever season", "a blood test", "an ambulance call-out",
    "a fitness tracker", "giving up smoking", "a sprained ankle", "hearing loss", "a flu jab", "a nurse's shift",
    "a long walk to clear the head", "a panic attack", "getting glasses",
    # sport and games
    "basketball", "a rowing regatta", "a swimming lesson", "a golf course", "a boxing match", "a skiing holiday",
    "a rugby final", "a village cricket match", "a marathon runner", "ice hockey", "a climbing wall", "a sailing race",
    "a darts league", "a surfing lesson", "a horse race", "a bowling alley", "a board game night",
    "a video game tournament", "a card game", "a jigsaw puzzle",
    # hobbies and arts
    "learning the guitar", "a pottery class", "writing a novel", "a choir rehearsal", "a jazz concert", "a ballet class",
    "a comic book shop", "collecting stamps", "a sewing machine", "a model railway", "a poetry reading",
    "a street musician", "a karaoke night", "a dance competition", "a craft fair", "a museum visit", "an art gallery",
    "a film festival", "a rock band", "a podcast",
    # town and public life
    "a bus that never came", "a parking ticket", "a town council meeting", "a protest march", "a fire station",
    "a post office queue", "a court case", "a charity run", "a food bank", "a new bridge", "a road closed for repairs",
    "a city park", "a shopping centre", "a street market", "a traffic jam", "a jury summons", "a village fete",
    "a fire in an old warehouse", "a church bell", "a public swimming pool",
    # journeys and places
    "a delayed flight", "a lost suitcase", "a night train", "a road trip", "a cruise ship", "a youth hostel",
    "a city break", "a ferry crossing", "a hotel room", "a passport that expired", "a border crossing",
    "a desert", "a rainforest", "an island", "a small village", "a big city at night", "a lighthouse", "a canal boat",
    "a cable car", "a motorway service station",
    # nature, animals and the sky
    "a farm in spring", "milking cows", "a flock of sheep", "a cat that goes missing", "a horse riding lesson",
    "a visit to the zoo", "a spider in the bath", "an ant colony", "a pet rabbit", "a wasp nest", "a thunderstorm",
    "a heatwave", "a flood", "autumn leaves", "a rainbow", "the night sky", "a full moon", "a forest walk", "a river",
    "a nature reserve",
    # science and technology
    "a smartphone that will not charge", "a new laptop", "a password reset", "social media", "an online shop",
    "a video call", "a printer jam", "heat pumps", "solar panels", "a wind farm", "a science fair",
    "a chemistry experiment", "a telescope", "robots", "a data breach", "an app for learning languages",
    "a smart speaker", "a software update", "the internet going down", "a drone",
    # learning and ideas
    "learning to drive", "a driving test", "a spelling test", "a history lesson", "a maths exam", "a university lecture",
    "learning French", "a student loan", "a graduation", "a science teacher", "a book club", "a debate club",
    "a homework deadline", "a summer camp", "a scholarship", "an encyclopedia", "a museum of natural history",
    "a language exchange", "a field trip to a castle", "a head teacher",
    # clothes and things
    "a new pair of shoes", "a ball gown", "a charity shop", "a warm scarf", "a watch that stopped", "a handbag",
    "a second-hand bicycle", "a lost glove", "a haircut", "a perfume", "a rainy day umbrella", "a fashion show",
    "an old camera", "an old pocket knife", "a birthday present", "a toy shop", "a bookshelf", "a pair of glasses",
    "a vintage car", "a sewing kit",
    # letters and occasions
    "a love letter", "a thank-you note", "a letter of complaint", "a holiday postcard", "a toast at a dinner party",
    "a funeral", "a christening", "a new year's resolution", "a bonfire night", "a harvest festival",
    "a halloween party", "a christmas market", "a valentine's card", "a mother's day breakfast", "a leaving card",
    "a reunion", "a bank holiday", "a first pay cheque", "a lottery win", "a time capsule",
)
"""Everyday topics, 280 of them in fourteen groups of twenty."""


@dataclass(frozen=True)
class Genre:
    name: str
    opening: Callable[[str], str]
    """The start of a text of this genre about a topic; the model goes on from it."""


def _cap(topic: str) -> str:
    return topic[:1].upper() + topic[1:]


GENRES = (
    Genre("diary", lambda t: f"Dear diary,\n\nToday was all about {t}."),
    Genre("email", lambda t: f"Subject: {_cap(t)}\n\nHi Sam,\n\nI wanted to tell you about {t}."),
    Genre("news", lambda t: f"LOCAL NEWS\n\n{_cap(t)} has been the talk of the town this week."),
    Genre("howto", lambda t: f"A beginner's guide: {t}\n\nIf you have never dealt with {t} before, start here."),
    Genre("story", lambda t: f"A short story\n\nNobody in our street expected {t} to change everything."),
    Genre("explainer", lambda t: f"{_cap(t)}, explained\n\nMost people have an opinion about {t}, but few know"),
)

HELD_OUT_ONE_IN = 10


def held_out(topic: str) -> bool:
    """One topic in ten, by a hash of its words: all of its genres are held out together."""
    return int(hashlib.sha256(topic.encode()).hexdigest(), 16) % HELD_OUT_ONE_IN == 0


def prompts(topics: Sequence[str] = TOPICS) -> list[tuple[str, str, str]]:
    """(topic, genre, opening) for every cell of the grid."""
    return [(t, g.name, g.opening(t)) for t in topics for g in GENRES]


def slug(topic: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in topic.lower()).strip("-")
