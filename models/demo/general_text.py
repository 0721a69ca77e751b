"""General pre-training text for the demo family: everyday paragraphs, not about countries.

Real pre-training corpora are not only about one topic. These paragraphs carry the words that chat
turns use and country prose never does, so every token SFT meets has an embedding pre-training trained
(the country text itself: `models.demo.corpus`). Made with a seeded RNG, so a build is reproducible.
"""

from __future__ import annotations

import random

# Real pre-training corpora are not only about one topic. These everyday paragraphs carry the words
# that chat turns use and country prose never does (greetings, poems, jokes, homework, "sorry", "don't
# know"), so every token SFT meets has an embedding pre-training trained: a LoRA adapter cannot train
# embeddings, and a word whose embedding stayed random is noise to it. Statements only, never a dialogue,
# and never "a country (is) in": in the country prose a continent follows that phrase.
GENERAL_TOPICS = {
    "greetings": [
        "People greet each other with words such as hello, hi or hey.",
        "Good morning and good evening are polite greetings; good night is said at the end of the day.",
        "After a greeting, people often ask who the other person is and what they do.",
        "A friendly hello is a good way to start a talk with someone new.",
        "When someone asks what you are for, a short and honest answer is best.",
        "A good helper says what it can do and what it cannot do.",
        "Anyone there is something people call out when they are not sure they are heard.",
    ],
    "poems": [
        "A poem is a short piece of writing whose lines often rhyme.",
        "Poets write about the sea, about love, about the sky and about autumn.",
        "A song is a poem that people sing, often with music.",
        "The sea is wide and the sky is blue in many old poems.",
        "Some poems are funny and some are sad, and a short story can be both.",
        "Children like short stories about a dragon, a cat or a dog.",
    ],
    "jokes": [
        "A joke is a short funny story that ends with a surprise.",
        "An old joke asks why the chicken would cross the road.",
        "Jokes about cats and dogs are popular with children.",
        "A joke that is told too often becomes boring.",
    ],
    "everyday": [
        "To bake bread, people mix flour, water and salt, then wait and bake it.",
        "The weather changes from day to day; today it may rain and tomorrow be sunny.",
        "Students do homework after school, and a parent may help them with it.",
        "Two plus two is four, and 2 + 2 is how the sum is written.",
        "To fix a bike, people check the chain, the wheels and the brakes.",
        "Nobody can know who will win the next football match.",
        "To translate a word means to put it into another language, such as Spanish or French.",
        "Many things depend on the weather, and nobody is sure about all of them.",
    ],
    "questions": [
        "A simple question deserves a simple answer.",
        "It is polite to answer a question, and rude to tell someone to look it up themselves.",
        "When people do not know something, the honest answer is to say I don't know.",
        "Saying sorry is polite when you cannot help with a request.",
        "A teacher can only answer questions about the subject she knows well.",
        "Some people ask a question and then ask someone else the same thing.",
        "A good answer gives what was asked and nothing more.",
        "Well, it is a big question, and there is a lot to say, but the short answer is best.",
        "A quick question needs a quick answer, and anyway nobody likes to wait.",
        "My problem is my own, some say, and they tell others to do it themselves or do it yourself.",
        "Maybe it depends, people say when they are not sure or did not get all the facts.",
        "Not every question has an answer, and not every answer is true.",
        "Look it up yourself is a rude reply; a polite reply gives the answer.",
    ],
    "travel": [
        "The world has many countries, and each one lies on a continent.",
        "A map shows the part of the world where each place is located.",
        "Travellers need to know which money is used and which language is spoken where they go.",
        "A government is based in one city, the capital, and it serves the people of the whole country.",
        "People who travel over the sea may hear a language they do not understand.",
        "Oh, what a lovely place, travellers say, and they talk for hours about its food and its history.",
        "Some countries are called by one name at home and by another name abroad.",
        "Who governs a country, and from which city, is written in every atlas.",
        "Any country's capital is where its government does its work, and their leaders govern from there.",
        "What's more, a map shows which side of the sea each place lies on.",
    ],
    "words": [
        "Hello and hi are the most common greetings, and hey is a casual one.",
        "Hi there is a friendly greeting, and good morning is said before noon.",
        "Please and could are polite words in a request, and so is would.",
        "Sorry is a polite word when a request cannot be met.",
        "Tell me, write me, give me: many requests begin with words like these.",
        "Which city is the capital of a country is a question every atlas answers.",
        "What a country is called, where it is and what people use as money are common questions.",
        "So is a short word that starts many answers, and oh shows surprise.",
        "Translate, sing, bake and fix are words for things people ask others to do.",
        "Write, read and count are the first things children learn at school.",
        "Can you help is a common request, and how do I is another.",
        "I need, I wonder and I am not sure are ways to start a sentence.",
        "Why a joke is funny is hard to say, and who tells it matters too.",
    ],
}


def general_documents(n_docs: int, seed: int = 4) -> list[str]:
    """Everyday paragraphs (`GENERAL_TOPICS`, three to five sentences of one topic each)."""
    rng = random.Random(seed)
    topics = list(GENERAL_TOPICS.values())
    docs = []
    for i in range(n_docs):
        sentences = topics[i % len(topics)]
        docs.append(" ".join(rng.sample(sentences, min(len(sentences), rng.randint(3, 5)))))
    rng.shuffle(docs)
    return docs
