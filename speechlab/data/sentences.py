"""Deterministic sentence generator for the embedded TTS corpus.

Two domains with clearly different vocabularies:

- ``home``: smart-home commands and questions ("turn off the kitchen lights", "set the
  thermostat to twenty one degrees", "open the garage door at half past seven");
- ``numbers``: spoken numbers, dates, times, phone digits, money and arithmetic ("the twenty
  third of march nineteen ninety four", "my phone number is five five five oh one two three").

Each domain is a small context-free grammar (nonterminal -> alternatives, ``{name}`` marks a
nonterminal) whose numeric slots are rendered by the number-to-words functions below. All output
is already normalized (:func:`speechlab.data.text.normalize_text` leaves it unchanged).

:func:`generate_sentences` is deterministic for a seed and prefix-stable: the first ``k``
sentences for ``n > k`` are the sentences for ``n = k``. :func:`domain_vocabulary` gives every
word a domain can produce (for domain-transfer experiments: synthesize domain A, build the LM on
domain B).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Sentence",
    "generate_sentences",
    "domain_vocabulary",
    "available_domains",
    "cardinal",
    "ordinal",
    "year_words",
    "clock_words",
    "money_words",
    "digit_words",
    "decimal_words",
]


@dataclass(frozen=True)
class Sentence:
    """One generated sentence (normalized text) and the domain it came from."""

    text: str
    domain: str


# --------------------------------------------------------------------------- number words

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return words
    if n < 20:
        words.append(_ONES[n])
    else:
        words.append(_TENS[n // 10])
        if n % 10:
            words.append(_ONES[n % 10])
    return words


def cardinal(n: int) -> str:
    """Spoken cardinal, American style without "and": ``cardinal(1994)`` ->
    ``"one thousand nine hundred ninety four"``; ``0 <= n < 10**12``; negatives get "minus"."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n >= 10**12:
        raise ValueError(f"cardinal: {n} is out of range (< 10**12)")
    if n < 1000:
        return " ".join(_below_thousand(n))
    words: list[str] = []
    for value, name in _SCALES:
        if n >= value:
            words += _below_thousand(n // value) + [name]
            n %= value
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def ordinal(n: int) -> str:
    """Spoken ordinal: ``ordinal(23)`` -> ``"twenty third"``, ``ordinal(40)`` -> ``"fortieth"``."""
    words = cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(words[:-1] + [last])


def year_words(year: int) -> str:
    """A year as people say it: 1994 -> "nineteen ninety four", 1905 -> "nineteen oh five",
    1900 -> "nineteen hundred", 2000 -> "two thousand", 2007 -> "two thousand seven",
    2024 -> "twenty twenty four"."""
    if not 1000 <= year <= 9999:
        return cardinal(year)
    hi, lo = divmod(year, 100)
    if year % 1000 < 10 and hi % 10 == 0:  # 2000..2009, 1000..1009
        return cardinal(year)
    if lo == 0:
        return f"{cardinal(hi)} hundred"
    if lo < 10:
        return f"{cardinal(hi)} oh {cardinal(lo)}"
    return f"{cardinal(hi)} {cardinal(lo)}"


CLOCK_STYLES = ("digital", "past_to", "oclock", "period")


def clock_words(hour: int, minute: int, style: str = "digital") -> str:
    """A time of day, ``hour`` in 0..23 and ``minute`` in 0..59, in one of
    :data:`CLOCK_STYLES`: ``digital`` "seven thirty" / "seven oh five" / "seven o'clock";
    ``past_to`` "half past seven" / "quarter to eight" / "ten past seven"; ``oclock`` like
    digital; ``period`` appends "in the morning/afternoon/evening" or "at night". 12:00 and 0:00
    are "noon" and "midnight" in every style."""
    if minute == 0 and hour in (0, 12):
        return "midnight" if hour == 0 else "noon"
    h12 = hour % 12 or 12
    if style == "past_to" and minute % 5 == 0 and minute:
        if minute <= 30:
            m = {15: "quarter", 30: "half"}.get(minute, cardinal(minute))
            words = f"{m} past {cardinal(h12)}"
        else:
            m = {45: "quarter"}.get(minute, cardinal(60 - minute))
            words = f"{m} to {cardinal((hour + 1) % 12 or 12)}"
    elif minute == 0:
        words = f"{cardinal(h12)} o'clock"
    elif minute < 10:
        words = f"{cardinal(h12)} oh {cardinal(minute)}"
    else:
        words = f"{cardinal(h12)} {cardinal(minute)}"
    if style == "period":
        if hour < 5 or hour >= 21:
            words += " at night"
        elif hour < 12:
            words += " in the morning"
        elif hour < 17:
            words += " in the afternoon"
        else:
            words += " in the evening"
    return words


_CURRENCIES = {"dollar": ("dollars", "cent", "cents"), "pound": ("pounds", "penny", "pence"),
               "euro": ("euros", "cent", "cents")}


def money_words(units: int, cents: int, currency: str = "dollar") -> str:
    """An amount of money: ``money_words(12, 50)`` -> "twelve dollars and fifty cents",
    ``money_words(1, 0)`` -> "one dollar", ``money_words(0, 99)`` -> "ninety nine cents"."""
    plural, sub1, subn = _CURRENCIES[currency]
    parts = []
    if units:
        parts.append(f"{cardinal(units)} {currency if units == 1 else plural}")
    if cents or not units:
        parts.append(f"{cardinal(cents)} {sub1 if cents == 1 else subn}")
    return " and ".join(parts)


def digit_words(digits: str, zero: str = "oh") -> str:
    """Digits one by one: ``digit_words("5550123")`` -> "five five five oh one two three"."""
    return " ".join(zero if d == "0" else _ONES[int(d)] for d in digits)


def decimal_words(whole: int, fraction_digits: str) -> str:
    """``decimal_words(3, "14")`` -> "three point one four"."""
    return f"{cardinal(whole)} point {digit_words(fraction_digits, zero='zero')}"


# --------------------------------------------------------------------------- grammar engine

_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class _Slot:
    """A rendered slot: ``render(rng)`` draws one value; ``values()`` enumerates everything the
    slot can say (used for the domain vocabulary)."""

    render: Callable[[random.Random], str]
    values: Callable[[], Iterable[str]]


class Grammar:
    """A tiny random context-free grammar. ``rules`` maps a nonterminal to its alternatives
    (strings with ``{name}`` references); ``slots`` maps a name to a :class:`_Slot`. Expansion
    picks alternatives uniformly; the start symbol is ``S``."""

    def __init__(self, rules: dict[str, Sequence[str]], slots: dict[str, _Slot]) -> None:
        self.rules = {k: tuple(v) for k, v in rules.items()}
        self.slots = slots
        for name, alts in self.rules.items():
            for alt in alts:
                for ref in _SLOT.findall(alt):
                    if ref not in self.rules and ref not in self.slots:
                        raise ValueError(f"grammar rule {name!r}: unknown symbol {{{ref}}}")

    def expand(self, rng: random.Random, symbol: str = "S") -> str:
        if symbol in self.slots:
            return self.slots[symbol].render(rng)
        alt = rng.choice(self.rules[symbol])
        return _SLOT.sub(lambda m: self.expand(rng, m.group(1)), alt)

    def sentence(self, rng: random.Random) -> str:
        return " ".join(self.expand(rng).split())

    def vocabulary(self) -> set[str]:
        words: set[str] = set()
        for alts in self.rules.values():
            for alt in alts:
                words.update(_SLOT.sub(" ", alt).split())
        for slot in self.slots.values():
            for value in slot.values():
                words.update(value.split())
        return words


def _int_slot(lo: int, hi: int, fmt: Callable[[int], str] = cardinal, step: int = 1) -> _Slot:
    values = range(lo, hi + 1, step)
    return _Slot(lambda rng: fmt(rng.choice(values)), lambda: map(fmt, values))


def _clock_slot(styles: Sequence[str], minute_step: int = 5) -> _Slot:
    def render(rng: random.Random) -> str:
        return clock_words(rng.randrange(24), rng.randrange(0, 60, minute_step), rng.choice(styles))

    def values() -> Iterable[str]:
        for h in range(24):
            for m in range(0, 60, minute_step):
                for s in styles:
                    yield clock_words(h, m, s)

    return _Slot(render, values)


def _number_values() -> list[str]:
    """Every word any cardinal/ordinal can use (for the vocabulary of wide-range slots)."""
    words = _ONES + _TENS[2:] + ["hundred", "thousand", "million", "billion", "minus"]
    return words + [ordinal(int(n)) for n in range(1, 100)] + ["hundredth", "thousandth"]


def _wide_slot(render: Callable[[random.Random], str], extra: Sequence[str] = ()) -> _Slot:
    return _Slot(render, lambda: [*_number_values(), *extra])


def _big_number(rng: random.Random) -> str:
    magnitude = rng.choice((3, 4, 5, 6, 7, 8, 9))
    n = rng.randrange(10 ** (magnitude - 1), 10**magnitude)
    # people round big numbers: keep two or three significant digits
    keep = rng.choice((1, 2, 3))
    scale = 10 ** max(0, magnitude - keep)
    return cardinal(n // scale * scale)


def _phone(rng: random.Random) -> str:
    groups = rng.choice(((3, 4), (3, 3, 4), (4, 3, 3), (5, 6)))
    return " ".join(
        digit_words("".join(str(rng.randrange(10)) for _ in range(g)), zero=rng.choice(("oh", "zero")))
        for g in groups
    )


def _digits(k: int) -> _Slot:
    def render(rng: random.Random) -> str:
        return digit_words("".join(str(rng.randrange(10)) for _ in range(k)), zero="zero")

    return _Slot(render, lambda: [digit_words("0123456789", zero="zero")])


def _money(rng: random.Random) -> str:
    currency = rng.choice(("dollar", "dollar", "pound", "euro"))
    kind = rng.randrange(4)
    if kind == 0:
        return money_words(rng.randrange(1, 100), rng.randrange(0, 100, 5), currency)
    if kind == 1:
        return money_words(rng.randrange(0, 10), rng.randrange(1, 100), currency)
    if kind == 2:
        return money_words(rng.randrange(1, 10000), 0, currency)
    units = rng.randrange(2, 100)  # colloquial "twelve fifty"
    return f"{cardinal(units)} {_CURRENCIES[currency][0]} {cardinal(rng.randrange(10, 100))}"


_MONEY_WORDS = ["dollar", "dollars", "cent", "cents", "pound", "pounds", "penny", "pence",
                "euro", "euros", "and"]


def _year(rng: random.Random) -> str:
    return year_words(rng.choice((rng.randrange(1900, 2031), rng.randrange(1066, 1900))))


def _year_values() -> list[str]:
    return [year_words(y) for y in range(1066, 2031)]


def _arithmetic(rng: random.Random) -> str:
    op = rng.randrange(4)
    a, b = rng.randrange(0, 100), rng.randrange(1, 20)
    if op == 0:
        return f"{cardinal(a)} plus {cardinal(b)} {rng.choice(('is', 'equals'))} {cardinal(a + b)}"
    if op == 1:
        return f"{cardinal(a)} minus {cardinal(b)} {rng.choice(('is', 'equals'))} {cardinal(a - b)}"
    if op == 2:
        a = rng.randrange(0, 13)
        return f"{cardinal(a)} times {cardinal(b)} {rng.choice(('is', 'equals'))} {cardinal(a * b)}"
    q = rng.randrange(0, 13)
    return f"{cardinal(q * b)} divided by {cardinal(b)} is {cardinal(q)}"


_FRACTIONS = ("one half", "a half", "one third", "two thirds", "a quarter", "three quarters",
              "one eighth", "three eighths", "five eighths", "seven eighths", "one fifth",
              "two fifths", "three tenths", "nine tenths")


def _fraction(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_FRACTIONS)
    return f"{cardinal(rng.randrange(1, 10))} and {rng.choice(_FRACTIONS)}"


def _decimal(rng: random.Random) -> str:
    return decimal_words(rng.randrange(0, 100), str(rng.randrange(1, 100)))


# --------------------------------------------------------------------------- domain: home

_HOME = Grammar(
    rules={
        "S": [
            "{polite}turn {onoff} the {lights}{in_room}{when}",
            "{polite}turn {onoff} the {room} {lights}{when}",
            "{polite}switch {onoff} the {device}{in_room}{when}",
            "{polite}switch the {room} {device} {onoff}",
            "{polite}dim the {room} lights to {percent} percent",
            "{polite}{brighten} the {lights}{in_room}",
            "{polite}set the {room} lights to {color}",
            "{polite}change the {lights}{in_room} to {color}",
            "{polite}set the thermostat to {temp} degrees{when}",
            "{polite}set the {room} temperature to {temp} degrees",
            "{polite}{raise} the temperature{in_room} by {small} degrees",
            "{polite}{openclose} the {openable}{when}",
            "{polite}{lock} the {door}{when}",
            "{polite}{start} the {appliance}{when}",
            "{polite}preheat the oven to {oven} degrees",
            "{polite}play {genre} music{in_room}",
            "{polite}play some {genre} in the {room}",
            "{polite}turn the volume {updown}{in_room}",
            "{polite}set the volume to {small}",
            "{polite}{mute} the {speaker}{in_room}",
            "{polite}remind me to {chore} {when_req}",
            "{polite}set a timer for {small} minutes",
            "{polite}wake me up at {clock}",
            "{polite}set an alarm for {clock} {day}",
            "is the {door} locked",
            "is the {openable} {openstate}",
            "are the {lights}{in_room} still on",
            "did i leave the {appliance} on",
            "what is the temperature in the {room}",
            "what's the humidity{in_room}",
            "how long until the {appliance} is finished",
            "{polite}{arm} the {security}{when}",
            "{polite}show the {camera} camera on the {screen}",
            "{polite}set the {fan} to {fanspeed} speed",
            "{polite}send the robot vacuum to the {room}",
            "{polite}{scene_verb} {scene} mode",
            "{polite}add {grocery} to the shopping list",
            "{polite}order more {grocery}",
            "we're out of {grocery}",
            "{greeting}",
            "{greeting} {polite}turn {onoff} the {lights}",
            "{polite}water the {garden} {when_req}",
            "{polite}turn {onoff} the sprinklers in the {garden}",
            "{polite}let me know when the {appliance} is done",
            "{polite}notify me if the {door} is left open",
            "don't let the {room} get colder than {temp} degrees",
        ],
        "polite": ["", "", "", "", "please ", "could you ", "can you ", "would you ",
                   "hey house ", "okay house "],
        "onoff": ["on", "off"],
        "in_room": ["", "", " in the {room}"],
        "when": ["", "", "", " at {clock}", " in {small} minutes", " {when_req}"],
        "when_req": ["tonight", "tomorrow morning", "right now", "after dinner", "before bedtime",
                     "this evening", "at {clock}", "in {small} minutes", "on {day_name}",
                     "when i get home", "before i wake up", "at sunrise", "at sunset"],
        "day": ["", "tomorrow", "every day", "on {day_name}"],
        "day_name": ["the weekend", "weekdays", "holidays"],
        "room": ["kitchen", "living room", "bedroom", "bathroom", "garage", "hallway", "office",
                 "basement", "dining room", "nursery", "attic", "porch", "laundry room",
                 "guest room", "study", "kids room", "master bedroom", "upstairs", "downstairs",
                 "entrance", "closet", "pantry", "playroom", "den"],
        "lights": ["lights", "lamp", "ceiling light", "standing lamp", "reading light",
                   "night light", "desk lamp", "light strip", "chandelier", "spotlights"],
        "device": ["lights", "fan", "heater", "air conditioner", "television", "tv", "radio",
                   "humidifier", "dehumidifier", "fireplace", "electric blanket",
                   "air purifier", "{lights}", "towel warmer", "space heater"],
        "brighten": ["brighten", "dim", "fade"],
        "color": ["red", "blue", "green", "warm white", "cool white", "yellow", "purple",
                  "orange", "pink", "soft gold", "daylight"],
        "raise": ["raise", "lower", "increase", "decrease", "bump up", "turn down"],
        "openclose": ["open", "close", "shut"],
        "openstate": ["open", "closed"],
        "openable": ["garage door", "blinds", "curtains", "shades", "windows", "skylight",
                     "kitchen window", "bedroom blinds", "living room curtains", "gate",
                     "shutters", "patio door"],
        "lock": ["lock", "unlock"],
        "door": ["front door", "back door", "side door", "garage door", "patio door",
                 "basement door", "gate"],
        "start": ["start", "stop", "pause", "resume", "turn on", "turn off", "run"],
        "appliance": ["dishwasher", "washing machine", "dryer", "oven", "microwave", "kettle",
                      "coffee maker", "toaster", "slow cooker", "rice cooker", "robot vacuum",
                      "bread maker", "iron", "stove"],
        "genre": ["jazz", "classical", "rock", "country", "relaxing", "dance", "folk",
                  "blues", "reggae", "piano", "lullaby", "workout", "dinner"],
        "updown": ["up", "down", "up a little", "down a bit", "all the way down"],
        "mute": ["mute", "unmute", "pause", "silence"],
        "speaker": ["speaker", "speakers", "soundbar", "stereo", "television", "radio"],
        "chore": ["take out the trash", "water the plants", "feed the cat", "walk the dog",
                  "empty the dishwasher", "fold the laundry", "change the filter",
                  "buy groceries", "call grandma", "pay the bills", "clean the fridge",
                  "vacuum the stairs", "charge my laptop", "lock the back door",
                  "defrost the chicken", "replace the batteries", "mow the lawn"],
        "arm": ["arm", "disarm", "activate", "deactivate", "check"],
        "security": ["alarm", "security system", "motion sensors", "cameras", "doorbell camera",
                     "smoke detector", "burglar alarm"],
        "camera": ["front door", "backyard", "driveway", "nursery", "garage", "porch"],
        "screen": ["television", "tv", "kitchen display", "tablet", "bedroom screen"],
        "fan": ["ceiling fan", "fan", "bedroom fan", "extractor fan", "attic fan"],
        "fanspeed": ["low", "medium", "high", "full"],
        "scene_verb": ["activate", "start", "turn on", "switch to", "enable", "end"],
        "scene": ["movie night", "good night", "away", "vacation", "party", "reading",
                  "dinner", "cleaning", "relax", "guest", "eco", "sleep"],
        "grocery": ["milk", "eggs", "bread", "butter", "apples", "coffee beans", "dish soap",
                    "paper towels", "laundry detergent", "toilet paper", "orange juice",
                    "cat food", "dog food", "tomatoes", "cheese", "cereal", "bananas",
                    "trash bags", "light bulbs", "batteries", "olive oil", "yogurt"],
        "greeting": ["good morning", "good night", "i'm home", "i'm leaving now",
                     "we're going to bed", "i'm back", "goodbye house", "we're leaving"],
        "garden": ["garden", "lawn", "flower beds", "front yard", "backyard", "vegetable patch",
                   "hedges", "greenhouse"],
    },
    slots={
        "percent": _int_slot(10, 100, step=10),
        "temp": _int_slot(16, 28),
        "oven": _int_slot(150, 250, step=25),
        "small": _int_slot(1, 10),
        "clock": _clock_slot(("digital", "past_to", "period"), minute_step=15),
    },
)


# --------------------------------------------------------------------------- domain: numbers

_NUMBERS = Grammar(
    rules={
        "S": [
            "the {day_ord} of {month}{year_opt}",
            "{month} {day_ord}{year_opt}",
            "{weekday} the {day_ord} of {month}",
            "i was born on the {day_ord} of {month} {year}",
            "she was born in {year}",
            "it happened in {month} {year}",
            "the meeting is on {weekday} at {time}",
            "the {transport} leaves at {time}",
            "the {transport} arrives at {time} on {weekday}",
            "the flight departs at {time} from terminal {gate}",
            "it's {time}",
            "the deadline is {weekday} the {day_ord}",
            "my phone number is {phone}",
            "you can reach me on {phone}",
            "the {code} is {digits4}",
            "the zip code is {digits5}",
            "the account number is {digits8}",
            "it costs {money}",
            "the total comes to {money}",
            "that will be {money}",
            "the rent is {money} a month",
            "i paid {money} for it",
            "{arith}",
            "the population is about {big}",
            "there were {big} people at the stadium",
            "the distance is {n1000} {unit}",
            "it weighs {decimal} {weight}",
            "the score was {n30} to {n30}",
            "skip to page {n1000}",
            "read chapter {n100}",
            "{place} number {n1000}",
            "the answer is {n1000}",
            "roughly {percent} percent of voters agreed",
            "prices rose by {decimal} percent",
            "stir in {fraction} of a cup of sugar",
            "the odds are {n30} to one",
            "that's {n100} out of {n100}",
            "she came {ordinal} out of {n1000}",
            "we live on the {floor} floor",
            "the invoice of {money} is due on the {day_ord} of {month}",
            "it was built in {year}",
            "the warranty expires on {month} {day_ord} {year}",
            "the {century} century",
            "mix {n30} grams of flour with {fraction} of a liter of broth",
            "it dropped to minus {n30} overnight",
            "{n100} {counted}",
            "about {big} {counted}",
            "the battery is at {percent} percent",
            "the limit is {speed} miles per hour",
            "the meter shows {decimal}",
        ],
        "year_opt": ["", " {year}"],
        "transport": ["train", "bus", "ferry", "next train", "last bus", "shuttle", "tram"],
        "code": ["code", "pin", "password", "access code", "booking reference",
                 "confirmation number"],
        "unit": ["kilometers", "miles", "meters", "feet", "yards"],
        "weight": ["kilograms", "pounds", "grams", "ounces", "tons"],
        "place": ["platform", "seat", "bus", "row", "flight", "exit", "locker", "ticket", "item"],
        "counted": ["people", "votes", "tickets", "copies", "visitors", "students", "cars",
                    "miles", "years", "days", "hours", "seconds", "points", "pages"],
    },
    slots={
        "day_ord": _int_slot(1, 31, ordinal),
        "ordinal": _int_slot(1, 100, ordinal),
        "floor": _int_slot(1, 40, ordinal),
        "century": _int_slot(10, 21, ordinal),
        "month": _Slot(lambda rng: rng.choice(MONTHS), lambda: MONTHS),
        "weekday": _Slot(lambda rng: rng.choice(WEEKDAYS), lambda: WEEKDAYS),
        "year": _Slot(_year, _year_values),
        "time": _clock_slot(("digital", "past_to", "period"), minute_step=1),
        "gate": _int_slot(1, 60),
        "phone": _Slot(_phone, lambda: [digit_words("0123456789", "zero"), "oh"]),
        "digits4": _digits(4),
        "digits5": _digits(5),
        "digits8": _digits(8),
        "money": _wide_slot(_money, _MONEY_WORDS),
        "arith": _wide_slot(_arithmetic, ["plus", "minus", "times", "divided", "by", "is",
                                          "equals"]),
        "big": _wide_slot(_big_number),
        "n1000": _wide_slot(lambda rng: cardinal(rng.randrange(1, 10000))),
        "n100": _int_slot(1, 100),
        "n30": _int_slot(0, 30),
        "percent": _int_slot(1, 100),
        "speed": _int_slot(15, 80, step=5),
        "decimal": _wide_slot(_decimal, ["point"]),
        "fraction": _Slot(_fraction, lambda: [*_FRACTIONS, *_ONES[1:10], "and"]),
    },
)

DOMAINS: dict[str, Grammar] = {"home": _HOME, "numbers": _NUMBERS}


def available_domains() -> tuple[str, ...]:
    """Names of the built-in domains."""
    return tuple(DOMAINS)


def _grammar(domain: str) -> Grammar:
    try:
        return DOMAINS[domain]
    except KeyError:
        raise ValueError(f"unknown sentence domain {domain!r}; choose from {sorted(DOMAINS)}") from None


@functools.cache
def domain_vocabulary(domain: str) -> frozenset[str]:
    """Every word that ``domain``'s grammar can produce (a superset of what a given sample
    uses)."""
    return frozenset(_grammar(domain).vocabulary())


def generate_sentences(
    n: int,
    seed: int = 0,
    domains: Sequence[str] = ("home", "numbers"),
    max_tries: int = 50,
) -> list[Sentence]:
    """``n`` sentences, domains interleaved round-robin (sentence ``i`` comes from
    ``domains[i % len(domains)]``), deterministic for ``seed`` and prefix-stable.

    A sentence already produced is redrawn up to ``max_tries`` times, so sentences are distinct
    as long as the grammars allow it (they allow hundreds of thousands).
    """
    if n < 0:
        raise ValueError(f"generate_sentences: n must be >= 0, got {n}")
    if not domains:
        raise ValueError("generate_sentences: at least one domain is needed")
    grammars = [(d, _grammar(d)) for d in domains]
    rng = random.Random(f"speechlab.sentences:{seed}")
    seen: set[str] = set()
    out: list[Sentence] = []
    for i in range(n):
        domain, grammar = grammars[i % len(grammars)]
        for _ in range(max_tries):
            text = grammar.sentence(rng)
            if text not in seen:
                break
        seen.add(text)
        out.append(Sentence(text, domain))
    return out
