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


@dataclass(frozen=True)
class SharedPrefixWorkload:
    """What a prefix cache is for: requests that share a long system prompt (an assistant's instructions),
    and multi-turn chats that resend the whole conversation each turn (a fixed assistant reply stands in for
    the model's, so the prompts are the same on every run)."""

    num_requests: int = 32
    min_output_tokens: int = 16
    max_output_tokens: int = 64
    seed: int = 0
    turns: int = 4  # per multi-turn chat; half the requests are turns, half single questions

    def system_prompt(self) -> str:
        rules = [f"When the user asks about {topic}, answer plainly, cite one concrete example, and never "
                 f"invent numbers." for topic in TOPICS[:12]]
        return "You are the help desk of a public library. " + " ".join(rules)

    def requests(self) -> list[tuple[list[dict], int]]:
        rng = random.Random(self.seed)
        system = {"role": "system", "content": self.system_prompt()}
        singles = self.num_requests - self.num_requests // 2
        out = []
        for index in range(singles):
            ask = rng.choice(ASKS).format(topic=TOPICS[(index + rng.randrange(len(TOPICS))) % len(TOPICS)])
            out.append(([system, {"role": "user", "content": ask}], self._length(rng)))
        for chat in range((self.num_requests - singles + self.turns - 1) // self.turns):
            conversation = [system]
            for turn in range(self.turns):
                if len(out) == self.num_requests:
                    break
                ask = rng.choice(ASKS).format(topic=TOPICS[(chat * 5 + turn) % len(TOPICS)])
                conversation = conversation + [{"role": "user", "content": ask}]
                out.append((conversation, self._length(rng)))
                conversation = conversation + [{"role": "assistant", "content": f"Here is what I know. {ask}"}]
        return out

    def _length(self, rng: random.Random) -> int:
        return rng.randint(self.min_output_tokens, self.max_output_tokens)

    def describe(self) -> dict:
        return {"requests": self.num_requests, "output_tokens_range": [self.min_output_tokens, self.max_output_tokens],
                "seed": self.seed, "prompts": f"one long system prompt shared by all; half single questions, half "
                                              f"turns of {self.turns}-turn chats resending the conversation",
                "sampling": "greedy", "lengths": "fixed: min_tokens = max_tokens, EOS ignored"}


WORKLOADS = {"default": EngineWorkload, "shared-prefix": SharedPrefixWorkload}
SYSTEMS = ("hf-sequential", "hf-static", "hf-continuous", "labkit")  # what the default workload runs through
PREFIX_SYSTEMS = ("labkit-no-prefix-cache", "labkit")  # shared-prefix: the cache off, then on
OPTIONAL_SYSTEMS = ("vllm",)  # only when asked for: needs --vllm-python (`make vllm`)
