"""Cross-channel identity resolution and pseudonymisation.

A node is one ``(channel, customer_key)``; two nodes are one customer when a chain of shared
``(link_type, link_value)`` pairs joins them. The customer is the connected component, found with
scipy's ``connected_components`` on the bipartite key–link graph.

Two rules keep strangers apart (both reported, never silent):

1. **Over-shared links are ignored.** A link value held by more than ``max_keys_per_link``
   distinct keys (a shop's generic e-mail, a family card handed round) joins nobody.
2. **Components are capped.** A component with more than ``max_keys_per_customer`` keys is split
   by removing, in each such component, the link joining the most keys (ties: the smallest
   ``(link_type, link_value)``), and recomputing, until every component fits. After
   ``max_split_rounds`` rounds every link of a still-oversized component is removed, so each of
   its keys stands alone.

What leaves this package names customers only by ``customer_id``, an HMAC-SHA256 pseudonym of
the component's smallest node under a secret salt; raw keys and link values never leave.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.schema import UNIFIED_EVENT_COLUMNS

SALT_ENV = "OMNI_SALT"
DEMO_SALT = "omnichannel-ml-demo-salt-not-secret"
_SEP = "\x1f"  # cannot occur in a validated id (it is a control character in any sane export)


#: A salt shorter than this can be guessed: ``salt_check`` and a key map let anyone test guesses.
MIN_SALT_LENGTH = 32


class DemoSaltWarning(UserWarning):
    """The built-in demo salt is in use: pseudonyms are reversible by anyone with the code."""


class WeakSaltWarning(UserWarning):
    """``$OMNI_SALT`` is shorter than :data:`MIN_SALT_LENGTH`: it may be guessed."""


@dataclass(frozen=True)
class IdentityConfig:
    """How identities are resolved and pseudonymised.

    Attributes:
        salt: secret key for the HMAC pseudonyms.
        max_keys_per_link: a link value shared by more keys than this is ignored.
        max_keys_per_customer: components larger than this are split.
        max_split_rounds: rounds of splitting before an oversized component is dissolved.
    """

    salt: str
    max_keys_per_link: int = 8
    max_keys_per_customer: int = 16
    max_split_rounds: int = 20

    @classmethod
    def from_env(cls, **overrides: int) -> IdentityConfig:
        """Salt from ``$OMNI_SALT``; warns loudly (``DemoSaltWarning``) when it falls back."""
        salt = os.environ.get(SALT_ENV, "")
        if not salt:
            warnings.warn(
                f"{SALT_ENV} is not set: using the built-in DEMO salt. Customer pseudonyms are NOT "
                f"secret. Set {SALT_ENV} to a long random secret before using real customer data.",
                DemoSaltWarning,
                stacklevel=2,
            )
            salt = DEMO_SALT
        elif len(salt) < MIN_SALT_LENGTH:
            warnings.warn(
                f"{SALT_ENV} has {len(salt)} characters: a short or guessable salt can be found "
                "by trying guesses against the salt fingerprint and key map stored with the "
                f"models, and then card numbers by trying them. Use a random secret of at least "
                f"{MIN_SALT_LENGTH} characters (python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))').",
                WeakSaltWarning,
                stacklevel=2,
            )
        return cls(salt=salt, **overrides)


def pseudonym(
    salt: str, domain: str, values: pd.Series | list[str], length: int = 24
) -> np.ndarray:
    """HMAC-SHA256 of each value under ``salt`` in a ``domain`` (hex, ``length`` characters)."""
    key = salt.encode()
    prefix = (domain + _SEP).encode()
    return np.array(
        [hmac.digest(key, prefix + v.encode(), hashlib.sha256).hex()[:length] for v in values],
        dtype=object,
    )


def salt_check(salt: str) -> str:
    """A fingerprint of ``salt``, kept beside what it pseudonymised so that another salt is
    noticed: the pseudonym of a fixed value in a domain of its own (no more than the key map
    beside it already tells of the salt)."""
    return str(pseudonym(salt, "salt-check", ["omnichannel-ml"])[0])


def node_names(channel: pd.Series, customer_key: pd.Series) -> pd.Series:
    """One string per (channel, customer_key) node; null where the key is null."""
    return (channel.astype("str") + _SEP + customer_key.astype("str")).where(customer_key.notna())


def distinct_nodes(channel: pd.Series, customer_key: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Factorize rows into distinct (channel, key) nodes: (code per row, -1 if null; node names).

    Names are built for distinct pairs only, so ten million rows cost little more than their
    few hundred thousand distinct keys.
    """
    key_codes, key_values = pd.factorize(customer_key)
    channel_codes, channel_values = pd.factorize(channel)
    stride = max(len(key_values), 1)
    pair = np.where(key_codes >= 0, channel_codes.astype(np.int64) * stride + key_codes, -1)
    pair_codes, pairs = pd.factorize(pair)
    known = pairs >= 0
    if not known.all():  # the null pair: renumber so that real nodes are 0..n-1 and null is -1
        null_code = int(np.flatnonzero(~known)[0])
        pair_codes = np.where(pair_codes == null_code, -1, pair_codes - (pair_codes > null_code))
        pairs = pairs[known]
    names = node_names(
        pd.Series(np.asarray(channel_values)[pairs // stride], dtype="str"),
        pd.Series(np.asarray(key_values)[pairs % stride], dtype="str"),
    )
    return pair_codes, names


def key_pseudonyms(salt: str, channel: pd.Series, customer_key: pd.Series) -> np.ndarray:
    """The pseudonym of each (channel, customer_key), as serving computes it for a lookup."""
    return pseudonym(salt, "key", node_names(channel, customer_key).tolist())


def new_customer_ids(salt: str, channel: pd.Series, customer_key: pd.Series) -> np.ndarray:
    """The ``customer_id`` a key linked to no other key gets: what resolution would name it."""
    return pseudonym(salt, "customer", node_names(channel, customer_key).tolist())


def customers_of_keys(
    salt: str, key_ids: dict[str, str], channel: pd.Series, customer_key: pd.Series
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``customer_id`` of each (channel, customer_key): the one the key map (key pseudonym
    -> customer_id, as training resolved it) gives, else the one resolution would name a key
    linked to no other.

    Returns:
        ``(customer_ids, new, key_pseudonyms)``: ``new`` marks the keys the map did not hold.
    """
    keys = key_pseudonyms(salt, channel, customer_key)
    customers = np.array([key_ids.get(k) for k in keys], dtype=object)
    new = pd.isna(customers)
    if new.any():
        customers[new] = new_customer_ids(salt, channel[new], customer_key[new])
    return customers, new, keys


@dataclass
class IdentityResolution:
    """Result of :func:`resolve_identities`.

    Attributes:
        nodes: one row per (channel, customer_key), sorted by ``node`` (internal name):
            ``component`` (customer index), ``customer_id``, ``key_id`` (pseudonym of the key).
            Holds raw keys: it stays inside ``features``.
        customer_ids: the ``customer_id`` of each component, by component index.
        ignored_links: over-shared or split links (``link_type``, ``link_id`` pseudonym,
            ``n_keys``, ``rule``) — safe to report.
        split_components: number of components the size cap split.
    """

    nodes: pd.DataFrame
    customer_ids: pd.Index
    ignored_links: pd.DataFrame
    split_components: int

    def component_of(self, channel: pd.Series, customer_key: pd.Series) -> np.ndarray:
        """Customer index per (channel, key) row; -1 for anonymous rows and unknown keys."""
        pair_codes, names = distinct_nodes(channel, customer_key)
        found = pd.Index(self.nodes["node"]).get_indexer(pd.Index(names))
        # Index -1 (an unknown key; an anonymous row) reads the -1 appended at the end.
        per_pair = np.append(self.nodes["component"].to_numpy(), -1)[found]
        return np.append(per_pair, -1)[pair_codes]

    def customer_of(self, channel: pd.Series, customer_key: pd.Series) -> pd.Series:
        """customer_id per (channel, key), as a categorical; missing for anonymous rows."""
        codes = self.component_of(channel, customer_key)
        return pd.Series(pd.Categorical.from_codes(codes, self.customer_ids), index=channel.index)


def resolve_identities(
    keys: pd.DataFrame, identities: pd.DataFrame | None, config: IdentityConfig
) -> IdentityResolution:
    """Resolve every (channel, customer_key) into a pseudonymous ``customer_id``.

    Args:
        keys: rows with ``channel`` and ``customer_key`` (e.g. the events); nulls are anonymous.
        identities: the identities table (channel, customer_key, link_type, link_value), or None.
        config: salt and the anti-merging caps.
    """
    names = [distinct_nodes(keys["channel"], keys["customer_key"])[1]]
    if identities is not None and len(identities):
        names.append(node_names(identities["channel"], identities["customer_key"]).dropna())
    node_index = pd.Index(pd.concat(names).unique()).sort_values()
    n_nodes = len(node_index)

    edges = _link_edges(identities, node_index)
    link_degree = edges.groupby("link", sort=False)["node"].size()
    ignored = []
    over_shared = link_degree[link_degree > config.max_keys_per_link].index
    if len(over_shared):
        ignored.append(_report(over_shared, link_degree, "over-shared link", config))
    edges = edges[~edges["link"].isin(over_shared)]

    labels = _components(edges, n_nodes)
    split_components = 0
    for round_ in range(config.max_split_rounds + 1):
        sizes = np.bincount(labels, minlength=labels.max() + 1 if n_nodes else 0)
        oversized = np.flatnonzero(sizes > config.max_keys_per_customer)
        if len(oversized) == 0:
            break
        if round_ == 0:
            split_components = len(oversized)
        in_oversized = np.isin(labels[edges["node"].to_numpy()], oversized)
        candidates = edges[in_oversized].assign(
            component=labels[edges["node"].to_numpy()][in_oversized]
        )
        if round_ == config.max_split_rounds:
            drop = pd.Index(candidates["link"].unique())
            rule = "component dissolved"
        else:
            candidates = candidates.assign(degree=candidates["link"].map(link_degree))
            # The most-shared link in each oversized component; ties broken by link name.
            best = candidates.sort_values(
                ["component", "degree", "link"], ascending=[True, False, True]
            )
            drop = pd.Index(best.drop_duplicates("component")["link"])
            rule = "component size cap"
        ignored.append(_report(drop, link_degree, rule, config))
        edges = edges[~edges["link"].isin(drop)]
        labels = _components(edges, n_nodes)

    # The component's name is its smallest node: stable when the component grows by new keys.
    nodes = pd.DataFrame({"node": node_index, "component": labels})
    representative = nodes.groupby("component")["node"].min().sort_index()
    customer_ids = pd.Index(
        pseudonym(config.salt, "customer", representative.tolist()), dtype="str"
    )
    nodes["customer_id"] = customer_ids[labels] if n_nodes else pd.Series(dtype="str")
    nodes["key_id"] = pseudonym(config.salt, "key", nodes["node"].tolist())
    ignored_links = (
        pd.concat(ignored, ignore_index=True)
        if ignored
        else pd.DataFrame(columns=["link_type", "link_id", "n_keys", "rule"])
    )
    return IdentityResolution(nodes, customer_ids, ignored_links, split_components)


def _link_edges(identities: pd.DataFrame | None, node_index: pd.Index) -> pd.DataFrame:
    """Distinct (node position, link name) pairs."""
    if identities is None or identities.empty:
        return pd.DataFrame({"node": pd.Series(dtype="int64"), "link": pd.Series(dtype="str")})
    names = node_names(identities["channel"], identities["customer_key"])
    node = node_index.get_indexer(pd.Index(names))
    link = identities["link_type"].astype("str") + _SEP + identities["link_value"].astype("str")
    return pd.DataFrame({"node": node, "link": link}).drop_duplicates(ignore_index=True)


def _components(edges: pd.DataFrame, n_nodes: int) -> np.ndarray:
    """Connected-component label per node of the bipartite key–link graph."""
    links, link_pos = np.unique(edges["link"].to_numpy(dtype=object), return_inverse=True)
    size = n_nodes + len(links)
    rows = edges["node"].to_numpy(dtype=np.int64)
    cols = n_nodes + link_pos.astype(np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph.tocsr(), directed=False)
    return np.asarray(labels[:n_nodes])


def _report(links: pd.Index, degree: pd.Series, rule: str, config: IdentityConfig) -> pd.DataFrame:
    names = pd.Series(links, dtype="str")
    link_type = names.str.split(_SEP, n=1).str[0]
    return pd.DataFrame(
        {
            "link_type": link_type.to_numpy(),
            "link_id": pseudonym(config.salt, "link", names.tolist()),
            "n_keys": degree.reindex(links).to_numpy(),
            "rule": rule,
        }
    )


def unify_events(events: pd.DataFrame, resolution: IdentityResolution) -> pd.DataFrame:
    """Events with ``customer_id`` in place of the raw ``customer_key`` (contract columns only).

    Extra columns are dropped: they may hold personal data the contract does not know about.
    """
    unified = events.assign(
        customer_id=resolution.customer_of(events["channel"], events["customer_key"])
    )
    return unified[list(UNIFIED_EVENT_COLUMNS)].reset_index(drop=True)


def build_customers(unified: pd.DataFrame, resolution: IdentityResolution) -> pd.DataFrame:
    """One row per customer: keys, channels, activity span and counts, home store.

    The home store is the fulfilling node (store, or the online node) where the customer made
    the most purchases (ties: the smallest store id); missing when they never bought.

    Args:
        unified: events from :func:`unify_events` (``customer_id`` categorical over
            ``resolution.customer_ids``).
        resolution: the identity resolution that produced them.
    """
    nodes = resolution.nodes
    n_customers = len(resolution.customer_ids)
    channel_code, channel_names = pd.factorize(nodes["node"].str.split(_SEP, n=1).str[0], sort=True)
    # The set of channels of a customer as a bit mask, so only the distinct sets become strings.
    mask = np.zeros(n_customers, dtype=np.int64)
    np.bitwise_or.at(mask, nodes["component"].to_numpy(), np.left_shift(1, channel_code))
    names = {
        m: "|".join(c for i, c in enumerate(channel_names) if m >> i & 1) for m in np.unique(mask)
    }
    customer = unified["customer_id"].cat.codes.to_numpy()
    known = customer >= 0
    purchase = (unified["event_type"] == "purchase").to_numpy() & known
    times = unified["event_time"].to_numpy()
    first = pd.Series(times[known]).groupby(customer[known]).min()
    last = pd.Series(times[known]).groupby(customer[known]).max()
    customers = pd.DataFrame(
        {
            "customer_id": resolution.customer_ids,
            "n_keys": np.bincount(nodes["component"].to_numpy(), minlength=n_customers),
            "channels": [names[m] for m in mask],
            "n_events": np.bincount(customer[known], minlength=n_customers),
            "n_purchases": np.bincount(customer[purchase], minlength=n_customers),
            "first_seen": first.reindex(range(n_customers)).to_numpy(),
            "last_seen": last.reindex(range(n_customers)).to_numpy(),
        }
    )
    store_codes, stores = pd.factorize(unified["store_id"], sort=True)
    bought = purchase & (store_codes >= 0)
    counts = pd.DataFrame(
        {"customer": customer[bought], "store": store_codes[bought]}
    ).value_counts()
    top = (
        counts.rename("n").reset_index()
        .sort_values(["customer", "n", "store"], ascending=[True, False, True])
        .drop_duplicates("customer")
    )  # fmt: skip
    home = np.full(n_customers, None, dtype=object)
    home[top["customer"].to_numpy()] = np.asarray(stores)[top["store"].to_numpy()]
    customers["home_store"] = pd.Series(home, dtype="str")
    return customers
