"""The engine benchmark's fixed synthetic workload: chat requests over varied topics, prompts of varied
length, output lengths drawn from a range and enforced exactly (min_tokens = max_tokens, EOS ignored), greedy.

The same seed gives the same requests on every machine, so figures from different runs compare."""
from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS = (
    "photosynthesis", "the French Revolution", "black holes", "sourdough bread", "the stock market",
    "plate tectonics", "the immune system", "jazz improvisation", "compound interest", "the Roman Empire",
    "machine learning", "coral reefs", "the printing press", "climate change", "chess openings",
    "the human heart", "renewable energy", "ancient Egypt", "quantum computing", "honey bees",
    "the water cycle", "Shakespeare's sonnets", "electric cars", "volcanoes", "the Silk Road",
    "vaccines", "origami", "the Moon landing", "coffee roasting", "public libraries", "marathon training",
    "the periodic table",
)
ASKS = (
    "Explain {topic} in simple terms.",
    "Write a short paragraph about {topic} for a curious teenager.",
    "What are three surprising facts about {topic}?",
    "I am preparing a talk on {topic}. Give me an outline with a few key points, and tell me which "
    "misconception the audience is most likely to hold.",
    "Summarise the history of {topic}, then say why it still matters today. Keep the tone friendly and "
    "avoid jargon; my readers are not specialists and will stop reading if it gets too technical.",
    "My friend claims that {topic} is overrated and not worth learning about. Write a polite but convincing "
    "reply, with one concrete example, one comparison to everyday life, and a question to end the "
    "conversation on. Please keep it under two hundred words, and do not use bullet points.",
)


@dataclass(frozen=True)
class EngineWorkload:
    num_requests: int = 32
    min_output_tokens: int = 16
    max_output_tokens: int = 128
    seed: int = 0

    def requests(self) -> list[tuple[list[dict], int]]:
        """(chat messages, output tokens) for each request, in arrival order."""
        rng = random.Random(self.seed)
        out = []
        for index in range(self.num_requests):
            topic = TOPICS[(index + rng.randrange(len(TOPICS))) % len(TOPICS)]
            ask = rng.choice(ASKS).format(topic=topic)
            out.append(([{"role": "user", "content": ask}], rng.randint(self.min_output_tokens, self.max_output_tokens)))
        return out

    def describe(self) -> dict:
        return {"requests": self.num_requests, "output_tokens_range": [self.min_output_tokens, self.max_output_tokens],
                "seed": self.seed, "prompts": "chat, varied topics and lengths", "sampling": "greedy",
                "lengths": "fixed: min_tokens = max_tokens, EOS ignored"}
