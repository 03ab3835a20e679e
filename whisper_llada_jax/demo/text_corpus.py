"""A deterministic generator of varied everyday English sentences for the demo corpus.

Twelve sentence shapes filled from word lists written for this project (names, relatives,
objects, places, cities, times, spoken numbers). Sentences are drawn with a seeded RNG,
de-duplicated, and split into test / validation / train *after* de-duplication, so a test
sentence never occurs in training. Numbers are spelled out, as a speaker would say them.
"""

from __future__ import annotations

import random

NAMES = ["Emma", "Oliver", "Sophia", "Liam", "Olivia", "Noah", "Grace", "Henry", "Lucy", "Jack",
         "Maria", "David", "Sarah", "Thomas", "Anna", "Peter", "Laura", "Daniel", "Helen", "Samuel",
         "Rachel", "George", "Alice", "Michael"]
RELATIVES = ["mother", "father", "sister", "brother", "uncle", "aunt", "cousin", "grandmother",
             "grandfather", "neighbor", "teacher", "friend"]
ADJECTIVES = ["red", "small", "old", "new", "heavy", "green", "blue", "wooden", "bright", "broken",
              "large", "yellow", "quiet", "warm", "clean", "empty"]
OBJECTS = ["book", "bicycle", "lamp", "basket", "jacket", "table", "chair", "letter", "camera",
           "bottle", "guitar", "blanket", "ticket", "umbrella", "map", "radio", "suitcase", "kettle",
           "painting", "clock"]
PLURALS = ["apples", "books", "chairs", "eggs", "letters", "cups", "pencils", "oranges", "boxes",
           "tickets", "flowers", "candles", "plates", "stamps", "shirts", "cookies"]
PLACES = ["in the kitchen", "at the market", "near the station", "in the garden", "at the library",
          "by the river", "in the office", "at the bakery", "on the bus", "at the park",
          "in the garage", "at the hotel", "near the school", "in the museum", "at the airport",
          "on the beach"]
CITIES = ["London", "Boston", "Paris", "Chicago", "Dublin", "Toronto", "Madrid", "Sydney",
          "Denver", "Berlin", "Seattle", "Vienna"]
DAYS = ["on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday",
        "on Sunday", "last week", "yesterday", "this morning", "last night", "in the afternoon"]
FUTURE = ["tomorrow", "next week", "on Friday", "next month", "this evening", "after lunch",
          "on Sunday", "before dinner"]
DEADLINES = ["tomorrow", "next week", "Friday", "lunch", "dinner", "noon", "Sunday", "the weekend"]
PART_OF_DAY = ["in the morning", "in the afternoon", "in the evening", "at night"]
PAST_VERBS = ["bought", "found", "painted", "carried", "cleaned", "lost", "borrowed", "sold",
              "fixed", "moved", "wrapped", "dropped"]
BASE_VERBS = ["buy", "find", "paint", "carry", "clean", "bring", "borrow", "sell", "fix", "move",
              "wrap", "check"]
ANIMALS = ["dog", "cat", "horse", "bird", "rabbit", "goat", "duck", "fox"]
ANIMAL_ACTIONS = ["slept", "waited", "played", "ran", "sat", "rested", "hid", "walked"]
VEHICLES = ["train", "bus", "ferry", "plane", "taxi", "tram"]
VEHICLE_VERBS = ["left", "arrived", "stopped", "departed"]
WEATHER = ["rain", "snow", "be sunny", "be windy", "be cold", "be warm", "be cloudy"]
FOODS = ["soup", "bread", "coffee", "cake", "salad", "tea", "pasta", "rice"]
FOOD_ADJ = ["hot", "cold", "sweet", "salty", "fresh", "warm", "delicious", "bitter"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell_number(n: int) -> str:
    """0..999 in words: 47 -> 'forty seven', 305 -> 'three hundred and five'."""
    if not 0 <= n < 1000:
        raise ValueError(n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + spell_number(rest))


def spell_time(hour: int, minute: int) -> str:
    """Clock time as spoken: (7, 0) -> "seven o'clock", (9, 15) -> 'nine fifteen'."""
    if minute == 0:
        return f"{spell_number(hour)} o'clock"
    if minute < 10:
        return f"{spell_number(hour)} oh {spell_number(minute)}"
    return f"{spell_number(hour)} {spell_number(minute)}"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _sentence(r: random.Random) -> str:
    c = r.choice
    name, name2 = r.sample(NAMES, 2)
    shape = r.randrange(12)
    if shape == 0:
        return f"{name} {c(PAST_VERBS)} {_a(c(ADJECTIVES))} {c(OBJECTS)} {c(PLACES)} {c(DAYS)}."
    if shape == 1:
        t = spell_time(r.randint(1, 12), c([0, 5, 10, 15, 20, 30, 40, 45, 50]))
        return f"The {c(VEHICLES)} to {c(CITIES)} {c(VEHICLE_VERBS)} at {t} {c(PART_OF_DAY)}."
    if shape == 2:
        return f"My {c(RELATIVES)} has {spell_number(r.randint(2, 99))} {c(PLURALS)} {c(PLACES)}."
    if shape == 3:
        return f"Please {c(BASE_VERBS)} the {c(ADJECTIVES)} {c(OBJECTS)} before {c(DEADLINES)}."
    if shape == 4:
        return f"Can you {c(BASE_VERBS)} the {c(OBJECTS)} {c(PLACES)} {c(FUTURE)}?"
    if shape == 5:
        return f"{name} and {name2} are flying to {c(CITIES)} {c(FUTURE)}."
    if shape == 6:
        return f"The {c(ADJECTIVES)} {c(ANIMALS)} {c(ANIMAL_ACTIONS)} {c(PLACES)} {c(DAYS)}."
    if shape == 7:
        price = spell_number(r.randint(2, 500))
        return f"The {c(ADJECTIVES)} {c(OBJECTS)} costs {price} dollars {c(PLACES)}."
    if shape == 8:
        return f"The weather report says it will {c(WEATHER)} {c(FUTURE)} in {c(CITIES)}."
    if shape == 9:
        return f"{name} thinks the {c(FOODS)} {c(PLACES)} is too {c(FOOD_ADJ)}."
    if shape == 10:
        return (f"We need {spell_number(r.randint(2, 40))} {c(PLURALS)} and "
                f"{spell_number(r.randint(2, 40))} {c(PLURALS)} {c(FUTURE)}.")
    return f"{name} told my {c(RELATIVES)} that the {c(OBJECTS)} was {c(PLACES)}."


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` unique sentences, deterministic in ``seed``."""
    r = random.Random(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} unique sentences")
        seen.setdefault(_sentence(r), None)
    return list(seen)


def split_sentences(n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict[str, list[str]]:
    """Disjoint train / val / test sentence lists (every sentence unique across splits)."""
    pool = generate_sentences(n_train + n_val + n_test, seed)
    return {"test": pool[:n_test], "val": pool[n_test:n_test + n_val],
            "train": pool[n_test + n_val:]}
