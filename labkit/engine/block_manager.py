"""Page bookkeeping for the KV cache, on plain data: who holds which pages, and which full pages can be
shared by requests whose prompts start the same way (automatic prefix caching). No tensors here: the
runner owns the pool of keys and values; this decides which page of it each token lives in.

Every page is in exactly one of three states, and the counts always add up to `num_pages`:
- held: referenced by one or more requests (`ref_count > 0`);
- cached-free: no request holds it, but it keeps its keys and values and its key, so a later request
  with the same prefix can take it back without computing it; evicted least-recently-freed first, and
  only when a fresh page is needed;
- free: nothing in it worth keeping.

A page's key is a 128-bit BLAKE2b digest chained over the token ids of that page and of every page before
it, so equal keys mean equal prefixes, not just equal pages. Keys are only given to full pages whose keys
and values have been computed. A hit is not re-checked against the tokens: with 128-bit digests a
collision among even 2^40 cached pages has a probability below 2^-48, far below the hardware's own
error rates. A shared page is never written: requests only write at positions past their cached prefix,
and a prefix match always leaves the prompt's last token to compute (its logits give the first output).
"""
from __future__ import annotations

import hashlib
import heapq
from array import array
from collections import OrderedDict


def page_keys(token_ids: list[int], page_size: int, num_pages: int, parent: bytes = b"") -> list[bytes]:
    """The chained keys of the first `num_pages` full pages of `token_ids`."""
    keys = []
    for index in range(num_pages):
        tokens = array("q", token_ids[index * page_size:(index + 1) * page_size]).tobytes()
        parent = hashlib.blake2b(parent + tokens, digest_size=16).digest()
        keys.append(parent)
    return keys


class BlockManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        if num_pages < 1 or page_size < 1:
            raise ValueError("a block manager needs at least one page of at least one token")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_pages
        self.page_key: list[bytes | None] = [None] * num_pages
        self.cached: dict[bytes, int] = {}  # key -> page, held or cached-free
        self._free: list[int] = list(range(num_pages))  # a min-heap: keeps pages in use packed low
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # least recently freed first
        self.tables: dict[str, list[int]] = {}  # request id -> its pages, in order
        self._keyed: dict[str, int] = {}  # request id -> how many of its pages have keys (prefix chain done)
        self._tokens_held: dict[str, int] = {}  # request id -> tokens it asked room for
        self.queries = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of which found cached

    # ---- sizes ----
    @property
    def num_free_pages(self) -> int:
        """Pages a request could take now: free ones and cached-free ones (evicted if taken)."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_used_pages(self) -> int:
        return self.num_pages - self.num_free_pages

    @property
    def num_cached_free_pages(self) -> int:
        return len(self._cached_free)

    @property
    def usage(self) -> float:
        """Fraction of pages held by requests (vLLM's kv_cache_usage_perc, as a fraction)."""
        return self.num_used_pages / self.num_pages

    @property
    def utilisation(self) -> float:
        """Fraction of held page memory filled by tokens: what rounding up to whole pages costs."""
        held = self.num_used_pages * self.page_size
        return min(1.0, sum(self._tokens_held.values()) / held) if held else 1.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # ---- requests take and give back pages ----
    def match(self, token_ids: list[int]) -> list[int]:
        """The cached pages that hold a prefix of `token_ids`, leaving at least its last token uncached."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for key in page_keys(token_ids, self.page_size, (len(token_ids) - 1) // self.page_size):
            page = self.cached.get(key)
            if page is None:
                break
            hits.append(page)
        return hits

    def allocate(self, request_id: str, hits: list[int], num_tokens: int) -> bool:
        """Give a new (or preempted) request the cached pages `hits` (from `match`) plus room up to
        `num_tokens` tokens. False, with nothing changed, if too few pages are free."""
        cached_tokens = len(hits) * self.page_size
        needed = self.pages_for(max(num_tokens, cached_tokens)) - len(hits)
        reusable = sum(1 for page in hits if self.ref_count[page] == 0)
        if needed > self.num_free_pages - reusable:
            return False
        for page in hits:
            self._take(page)
        table = self.tables[request_id] = list(hits)
        self._keyed[request_id] = len(hits)
        for _ in range(needed):
            table.append(self._fresh_page())
        self._tokens_held[request_id] = max(num_tokens, cached_tokens)
        return True

    def count_lookup(self, prompt_tokens: int, cached_tokens: int) -> None:
        """Add one request's prompt to the hit statistics (once per request, not again after a preemption)."""
        self.queries += prompt_tokens
        self.hits += cached_tokens

    def reserve(self, request_id: str, num_tokens: int) -> bool:
        """Make sure a running request holds pages for `num_tokens`. False (and no change) if too few are free."""
        table = self.tables[request_id]
        missing = self.pages_for(num_tokens) - len(table)
        if missing > self.num_free_pages:
            return False
        for _ in range(missing):
            table.append(self._fresh_page())
        self._tokens_held[request_id] = max(num_tokens, self._tokens_held.get(request_id, 0))
        return True

    def cache_computed(self, request_id: str, token_ids: list[int], num_computed: int) -> None:
        """Give keys to the request's pages that are now full and computed, so others can share them. If
        an identical page is already cached (two requests computed the same prefix at once), this one
        stays private and the cached one keeps the key."""
        if not self.enable_prefix_caching:
            return
        table, done = self.tables[request_id], self._keyed[request_id]
        full = min(num_computed // self.page_size, len(table))
        if full <= done:
            return
        parent = self.page_key[table[done - 1]] if done else b""
        if done and parent is None:  # its parent page lost its key (a private duplicate): the chain ends here
            return
        for offset, key in enumerate(page_keys(token_ids[done * self.page_size:], self.page_size, full - done,
                                               parent or b"")):
            page = table[done + offset]
            if key in self.cached:
                self._keyed[request_id] = full  # later pages chain from a key it does not own: stop here
                return
            self.page_key[page] = key
            self.cached[key] = page
        self._keyed[request_id] = full

    def free(self, request_id: str) -> None:
        """Give a request's pages back (finished, aborted or preempted). Pages with keys stay cached."""
        for page in reversed(self.tables.pop(request_id, ())):  # the prefix's tail is evicted before its head
            self.ref_count[page] -= 1
            if self.ref_count[page] == 0:
                if self.page_key[page] is not None:
                    self._cached_free[page] = None
                else:
                    heapq.heappush(self._free, page)
        self._keyed.pop(request_id, None)
        self._tokens_held.pop(request_id, None)

    def reset_prefix_cache(self) -> None:
        """Forget every cached-free page (held pages keep their keys until freed)."""
        for page in list(self._cached_free):
            self._evict(page)
            heapq.heappush(self._free, page)

    # ---- internals ----
    def _take(self, page: int) -> None:
        if self.ref_count[page] == 0:
            self._cached_free.pop(page, None)
        self.ref_count[page] += 1

    def _fresh_page(self) -> int:
        if self._free:
            page = heapq.heappop(self._free)
        else:
            page, _ = self._cached_free.popitem(last=False)  # the least recently freed
            self._evict(page)
        self.ref_count[page] = 1
        return page

    def _evict(self, page: int) -> None:
        self._cached_free.pop(page, None)
        key = self.page_key[page]
        if key is not None and self.cached.get(key) == page:
            del self.cached[key]
        self.page_key[page] = None

    def check(self) -> None:
        """Assert the invariants (tests call this after every step): each page in exactly one state, and
        reference counts equal to the tables that hold them."""
        held = [0] * self.num_pages
        for table in self.tables.values():
            for page in table:
                held[page] += 1
        assert held == self.ref_count, "reference counts differ from the page tables"
        free, cached_free = set(self._free), set(self._cached_free)
        assert len(free) == len(self._free) and not (free & cached_free)
        for page in range(self.num_pages):
            states = (self.ref_count[page] > 0) + (page in free) + (page in cached_free)
            assert states == 1, f"page {page} is in {states} states"
            if page in cached_free:
                assert self.page_key[page] is not None and self.cached.get(self.page_key[page]) == page
        for key, page in self.cached.items():
            assert self.page_key[page] == key

    def stats(self) -> dict:
        return {"kv_pages_total": self.num_pages, "kv_pages_used": self.num_used_pages, "kv_usage": self.usage,
                "kv_utilisation": self.utilisation, "kv_pages_cached_free": self.num_cached_free_pages,
                "prefix_cache_queries": self.queries, "prefix_cache_hits": self.hits,
                "prefix_cache_hit_rate": self.hit_rate}
