"""Token trees: the pure functions on hand-written tensors, and the 4-D mask path on real verifiers.

On a tiny Llama, a tiny Video-LLaVA and the bundled demo target, eager and sdpa: every node's logits from one
tree forward equal the logits of its chain verified alone, and after ``keep_tree_path`` the cache continues as
if that path alone had been verified.
"""

import pytest
import torch

from evcascade.decoding.prompting import VideoLlavaPrompter
from evcascade.decoding.tree import (TokenTree, accept_path, ancestor_matrix, attention_mask, build_tree,
                                     compact_kv, position_ids)
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest, VideoLlavaVerifier
from evcascade.errors import InputError
from evcascade.models.tiny import tiny_llama, tiny_tokenizer, tiny_video_llava

INF = float("-inf")


def test_build_tree_merges_shared_prefixes():
    tree = build_tree(7, [[1, 2, 3], [1, 4], [5], [1, 2]], ["L2", ["L1", "L1"], "ngram", "x"])
    assert tree.token_ids.tolist() == [7, 1, 2, 3, 4, 5]
    assert tree.parents == (-1, 0, 1, 2, 1, 0)
    assert tree.sources == ("target", "L2", "L2", "L2", "L1", "ngram")
    assert tree.depths() == [0, 1, 2, 3, 2, 1] and tree.children(1) == [2, 4] and not tree.is_chain
    assert build_tree(7, [[1, 2]]).is_chain and build_tree(7, []).num_nodes == 1
    with pytest.raises(ValueError, match="parent must come before"):
        TokenTree(torch.tensor([1, 2]), (-1, 1))
    with pytest.raises(ValueError, match="one source per path"):
        build_tree(7, [[1]], [])


def test_mask_and_positions_on_a_hand_written_tree():
    parents = [-1, 0, 1, 0]  # root -> a -> b, root -> c
    assert ancestor_matrix(parents).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]
    mask = attention_mask(parents, past_length=2)
    assert mask.shape == (1, 1, 4, 6) and mask.dtype == torch.float32
    assert mask[0, 0].tolist() == [[0, 0, 0, INF, INF, INF], [0, 0, 0, 0, INF, INF],
                                   [0, 0, 0, 0, 0, INF], [0, 0, 0, INF, INF, 0]]
    assert attention_mask(parents, 0, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert position_ids(parents, past_length=5).tolist() == [[5, 6, 7, 6]]


def test_accept_path_follows_the_targets_choices():
    tree = build_tree(7, [[1, 2, 3], [1, 4], [5]])  # 0:7 1:1 2:2 3:3 4:4 5:5
    assert accept_path(tree, torch.tensor([1, 2, 3, 6, 0, 0])) == ([1, 2, 3], 6)  # the whole chain and a bonus
    assert accept_path(tree, torch.tensor([1, 4, 0, 0, 9, 0])) == ([1, 4], 9)  # leaves the chain at depth 2
    assert accept_path(tree, torch.tensor([5, 0, 0, 0, 0, 8])) == ([5], 8)
    assert accept_path(tree, torch.tensor([3, 0, 0, 0, 0, 0])) == ([], 3)  # no child holds the choice
    with pytest.raises(ValueError, match="target_choices"):
        accept_path(tree, torch.tensor([1, 2]))


def test_compact_kv_keeps_the_past_and_the_path():
    cache = torch.arange(2 * 7.0).view(1, 2, 7, 1)  # [B, H, past 3 + 4 nodes, D]
    out = compact_kv(cache, past_length=3, keep=[0, 2, 3])
    assert out[0, 0, :, 0].tolist() == [0, 1, 2, 3, 5, 6] and out[0, 1, :, 0].tolist() == [7, 8, 9, 10, 12, 13]
    assert compact_kv(cache, 3, [0]).shape == (1, 2, 4, 1)


TREE = build_tree(5, [[6, 7, 8], [6, 9], [10, 11]])  # nodes 0:5 1:6 2:7 3:8 4:9 5:10 6:11
PATHS = {0: [], 1: [6], 2: [6, 7], 3: [6, 7, 8], 4: [6, 9], 5: [10], 6: [10, 11]}


def check_tree_against_chains(make_verifier, request, implementation, atol=1e-5):
    """Every node's logits vs its chain's; then keep the path 5 -> 6 -> 9 and continue with one token."""
    tree_verifier, chain_verifier = make_verifier(), make_verifier()
    for config in (tree_verifier.model.config, getattr(tree_verifier.model.config, "text_config", None)):
        if config is not None:
            config._attn_implementation = implementation
    tree_verifier.prefill(request)
    past = tree_verifier.cache_length
    logits = tree_verifier.verify_tree(TREE.token_ids[None], TREE.parents)  # [1, 7, V]
    assert logits.shape[:2] == (1, 7) and tree_verifier.cache_length == past + 7
    for node, path in PATHS.items():
        chain_verifier.prefill(request)
        chain = chain_verifier.verify(torch.tensor([[5, *path]]))  # [1, len+1, V]
        torch.testing.assert_close(logits[0, node], chain[0, -1], atol=atol, rtol=0)
    with pytest.raises(InputError, match="chain of nodes from the root"):
        tree_verifier.keep_tree_path([4])  # node 4's parent is node 1, not the root
    tree_verifier.keep_tree_path([1, 4])
    chain_verifier.prefill(request)
    reference = chain_verifier.verify(torch.tensor([[5, 6, 9, 3]]))[:, -1]
    after = tree_verifier.verify(torch.tensor([[3]]))[:, -1]
    assert tree_verifier.cache_length == past + 3 + 1
    torch.testing.assert_close(after, reference, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(vocab_size=80, seed=3)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_tree_logits_equal_chain_logits_on_a_text_llama(llama, implementation):
    check_tree_against_chains(lambda: CausalLMVerifier(llama), VerifyRequest(torch.tensor([[1, 4, 7, 2]])),
                              implementation)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_tree_logits_equal_chain_logits_on_video_llava(implementation):
    tok = tiny_tokenizer()
    model = tiny_video_llava(tok, seed=0)
    prompt = VideoLlavaPrompter(tok, model.config)("what colour is the object ?")
    pixels = torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # the visual prefix comes from the prefix cache: every node must see it
    check_tree_against_chains(lambda: VideoLlavaVerifier(model), VerifyRequest(prompt.target_ids, pixels),
                              implementation)


def test_tree_logits_equal_chain_logits_on_the_bundled_target():
    from evcascade.cascade import BUNDLED_DIR

    target = BUNDLED_DIR / "target"
    if not (target / "model.safetensors").exists():
        pytest.skip("no bundled demo target installed")
    from transformers import AutoTokenizer

    verifier = VideoLlavaVerifier.from_pretrained(target)
    model = verifier.model
    prompt = VideoLlavaPrompter(AutoTokenizer.from_pretrained(target), model.config)("describe the video .")
    size = model.config.vision_config.image_size
    frames = model.config.video_seq_length // verifier.tokens_per_frame
    pixels = torch.randn(1, frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    for implementation in ("eager", "sdpa"):  # a bigger model: fp32 rounding of the different shapes, ~1e-5
        check_tree_against_chains(lambda: VideoLlavaVerifier(model), VerifyRequest(prompt.target_ids, pixels),
                                  implementation, atol=2e-5)


def test_tail_parents_and_forest_masks():
    from evcascade.decoding.tree import tail_parents

    assert tail_parents(2, [-1, 0, 1, 0]) == [-1, 0, 1, 2, 1] and tail_parents(0, [-1, 0, 1, 0]) == [-1, 0, -1]
    forest = [-1, 0, -1]  # two roots hanging off the cache
    assert ancestor_matrix(forest).int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert position_ids(forest, 4).tolist() == [[4, 5, 4]]


def check_prefill_tree(make_verifier, request, prompt_last):
    """A tree in the prefill's own forward: row 0 = the plain prefill's, row i = node i's chain; then keep a path."""
    tree = build_tree(prompt_last, [[6, 7, 8], [6, 9], [10, 11]])
    tree_verifier, chain_verifier = make_verifier(), make_verifier()
    logits = tree_verifier.prefill_with_tree(request, tree.token_ids[None], tree.parents)  # [1, 7, V]
    prompt_length = tree_verifier.cache_length - 6
    for node, path in PATHS.items():
        reference = chain_verifier.prefill_with_draft(request, torch.tensor([path])) if path else \
            chain_verifier.prefill(request)[:, None]
        torch.testing.assert_close(logits[0, node], reference[0, -1], atol=2e-5, rtol=0)
    tree_verifier.keep_tree_path([5, 6])
    assert tree_verifier.cache_length == prompt_length + 2
    chain_verifier.prefill_with_draft(request, torch.tensor([[10, 11]]))
    torch.testing.assert_close(tree_verifier.verify(torch.tensor([[3]])), chain_verifier.verify(torch.tensor([[3]])),
                               atol=2e-5, rtol=0)


def test_tree_in_the_prefill(llama):
    prompt = torch.tensor([[1, 4, 7, 2]])
    check_prefill_tree(lambda: CausalLMVerifier(llama), VerifyRequest(prompt), 2)
    tok = tiny_tokenizer()
    model = tiny_video_llava(tok, seed=0)
    prompter = VideoLlavaPrompter(tok, model.config)
    pixels = torch.randn(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with_suffix = prompter("what colour is the object ?").target_ids
    check_prefill_tree(lambda: VideoLlavaVerifier(model), VerifyRequest(with_suffix, pixels), int(with_suffix[0, -1]))
    # a prompt that ends at the video: the tree's first level hangs off the cached prefix
    video_id = model.config.video_token_id
    at_video = with_suffix[:, : int((with_suffix[0] == video_id).nonzero().max()) + 1]
    check_prefill_tree(lambda: VideoLlavaVerifier(model), VerifyRequest(at_video, pixels), video_id)
