"""The Meta-World RGB-D environment: observation contract, geometry agreement, seeding, errors."""

import gymnasium as gym
import numpy as np
import pytest

from stvla import geometry
from stvla.benchmark.report import pooled
from stvla.envs import INSTRUCTIONS, TASKS, EnvConfig, has_subgoal, make_env
from stvla.evaluate.rollout import summarize


@pytest.fixture(scope="module")
def pick_place_env():
    env = make_env("pick-place-v3", image_size=64)
    yield env
    env.close()


def test_all_fifty_tasks_have_instructions_and_experts():
    from metaworld.policies import ENV_POLICY_MAP

    assert len(TASKS) == 50
    assert set(TASKS) <= set(ENV_POLICY_MAP)
    assert all(len(INSTRUCTIONS[t].split()) >= 3 for t in TASKS)


def test_observation_shapes_and_dtypes(pick_place_env):
    obs, info = pick_place_env.reset(seed=0)
    assert obs["rgb"].shape == (64, 64, 3) and obs["rgb"].dtype == np.uint8
    assert obs["depth"].shape == (64, 64) and obs["depth"].dtype == np.float32
    assert obs["camera.intrinsics"].shape == (3, 3) and obs["camera.pose"].shape == (4, 4)
    assert obs["ee.position"].shape == (3,) and obs["ee.pixel"].shape == (2,)
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    assert obs["instruction"] == INSTRUCTIONS["pick-place-v3"]
    assert pick_place_env.observation_space.contains(obs)
    assert 0.0 < obs["depth"].min() and obs["depth"].max() <= pick_place_env.config.depth_max
    assert set(info) >= {"success", "near_object", "grasped"}


def test_tasks_without_a_subgoal_report_none():
    """Meta-World's reach gives the distance to the goal as `near_object` (always truthy), reach-wall and
    door-close a constant 0: no sub-goal is reported for them, in the env, an evaluation or the bench."""
    env = make_env("reach-v3", image_size=64)
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.zeros(4, dtype=np.float32))
    finally:
        env.close()
    assert info["near_object"] is False and info["grasped"] is False
    assert not has_subgoal("reach-v3") and not has_subgoal("reach-moving-v3") and not has_subgoal("door-close-v3")
    assert has_subgoal("push-v3") and has_subgoal("pick-place-v3")
    episodes = [{"task": "reach-v3", "success": True, "subgoal": None, "steps": 5},
                {"task": "push-v3", "success": False, "subgoal": True, "steps": 9}]
    summary = summarize(episodes, ["reach-v3", "push-v3"])
    assert summary["per_task"]["reach-v3"]["subgoal_rate"] is None
    assert summary["per_task"]["push-v3"]["subgoal_rate"] == 1.0 and summary["overall"]["subgoal_rate"] == 1.0
    # A bench cell recorded before: reach-wall's sub-goal stored as False is left out, not counted as a miss.
    cell = {"episodes": [{"task": "reach-wall-v3", "success": True, "subgoal": False},
                         {"task": "push-wall-v3", "success": False, "subgoal": True}]}
    assert pooled([cell], metric="subgoal") == (1, 1) and pooled([cell], "reach-wall-v3", "subgoal") == (0, 0)


def test_depth_at_end_effector_pixel_matches_camera_frame_depth(pick_place_env):
    obs, _ = pick_place_env.reset(seed=3)
    errors = []
    for _ in range(40):
        obs, *_ = pick_place_env.step(pick_place_env.expert_action())
        u, v = np.round(obs["ee.pixel"]).astype(int)
        assert 0 <= u < 64 and 0 <= v < 64
        true_z = geometry.world_to_camera(obs["ee.position"], obs["camera.pose"])[2]
        # The point between the fingers is empty space; the fingers either side of it share its depth.
        window = obs["depth"][max(v - 2, 0):v + 3, max(u - 2, 0):u + 3]
        errors.append(float(np.abs(window - true_z).min()))
    assert np.median(errors) < 0.02 and max(errors) < 0.05, errors


def test_one_pass_colour_and_depth_equal_mujocos_two_renders(pick_place_env):
    """The env reads colour and depth from one pass; MuJoCo's Renderer draws the scene once for each."""
    pick_place_env.reset(seed=5)
    renderer = pick_place_env.unwrapped._renderer
    for _ in range(3):
        pick_place_env.step(pick_place_env.expert_action())
        renderer.update_scene(pick_place_env.unwrapped._mw.data, camera=pick_place_env.unwrapped._camera_id)
        rgb, depth = renderer.render_rgb_depth()
        renderer.enable_depth_rendering()
        two_pass_depth = renderer.render()
        renderer.disable_depth_rendering()
        np.testing.assert_array_equal(rgb, renderer.render())
        np.testing.assert_array_equal(depth, two_pass_depth)  # unclipped: the far background included
        assert 0.3 < float(np.median(depth)) < 3.0


def test_pose_is_a_rigid_transform_with_the_camera_looking_at_the_table(pick_place_env):
    obs, _ = pick_place_env.reset(seed=1)
    R = obs["camera.pose"][:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    # The rolled camera is upright: world "up" points towards the top of the image (-v).
    up_in_camera = R.T @ np.array([0.0, 0.0, 1.0])
    assert up_in_camera[1] < 0


def test_same_seed_same_start_and_different_seed_differs(pick_place_env):
    first, _ = pick_place_env.reset(seed=7)
    again, _ = pick_place_env.reset(seed=7)
    other, _ = pick_place_env.reset(seed=8)
    np.testing.assert_array_equal(first["rgb"], again["rgb"])
    np.testing.assert_array_equal(first["depth"], again["depth"])
    assert not np.array_equal(first["rgb"], other["rgb"])


def test_expert_solves_reach_and_reports_success():
    env = make_env("reach-v3", image_size=64, max_episode_steps=200)
    env.reset(seed=0)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(env.expert_action())
        assert not terminated
        if info["success"] or truncated:
            break
    env.close()
    assert info["success"]


def test_first_frame_shows_the_goal_marker_where_the_goal_is():
    env = make_env("reach-v3", image_size=128)
    for seed in (1, 2):  # the second episode's first frame once showed the first one's marker
        obs, _ = env.reset(seed=seed)
        goal = np.asarray(env._mw._target_pos)
        u, v = np.round(geometry.project_world_points(goal, obs["camera.intrinsics"], obs["camera.pose"])).astype(int)
        in_camera = np.linalg.inv(obs["camera.pose"]) @ np.append(goal, 1.0)
        assert abs(obs["depth"][v, u] - in_camera[2]) < 0.02  # the marker's own depth, not the table's behind it
        red, green, blue = obs["rgb"][v, u].astype(int)
        assert red > 150 and green < 80 and blue < 80  # reach's marker is red
    env.close()


def test_dart_noise_moves_the_robot_but_records_the_experts_correction():
    from stvla import features as F
    from stvla.data.collect import run_expert_episode

    env = make_env("reach-v3", image_size=64, max_episode_steps=200)
    clean = run_expert_episode(env, seed=7, action_noise=0.0)
    noisy = run_expert_episode(env, seed=7, action_noise=0.3)
    again = run_expert_episode(env, seed=7, action_noise=0.3)
    assert clean.success and noisy.success
    # The same start, another path: the executed moves were perturbed ...
    assert np.allclose(clean.frames[F.STATE][0], noisy.frames[F.STATE][0])
    steps = min(clean.length, noisy.length)
    assert np.abs(clean.frames[F.STATE][1:steps, :3] - noisy.frames[F.STATE][1:steps, :3]).max() > 1e-3
    # ... and each recorded action is the expert's own at the state it was recorded in (replayed from it).
    env.reset(seed=7)
    noise = np.random.default_rng(7)
    for index in range(5):
        assert np.allclose(env._state[:4], noisy.frames[F.STATE][index], atol=1e-5)
        assert np.allclose(env.expert_action(), noisy.frames[F.ACTION][index])
        executed = noisy.frames[F.ACTION][index].copy()  # the move made: the recorded action plus the seed's noise
        executed[:3] = np.clip(executed[:3] + noise.normal(0.0, 0.3, 3), -1.0, 1.0)
        env.step(executed)
    # The noise is drawn from the episode's seed: the same episode again.
    assert np.array_equal(noisy.frames[F.ACTION], again.frames[F.ACTION])
    env.close()


def test_bad_configuration_lists_valid_choices():
    with pytest.raises(ValueError, match="valid tasks: .*reach-v3"):
        EnvConfig(task="reach").validate()
    with pytest.raises(ValueError, match="valid cameras: .*corner3"):
        EnvConfig(camera="front").validate()
    with pytest.raises(ValueError, match="valid sizes: .*128"):
        EnvConfig(image_size=100).validate()


def test_gymnasium_registration_and_truncation():
    env = gym.make("stvla/reach-v3", image_size=64, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(3)]
    env.close()
    assert flags == [False, False, True]


def test_the_moving_goal_variant_moves_its_goal_and_the_expert_leads_it():
    """reach-moving-v3: the goal moves by its per-episode velocity every step (bouncing inside the goal
    space), its marker with it; the expert aims ahead of it, the control expert at it."""
    from stvla.envs import episode_seed, parse_tasks
    from stvla.envs.variants import VARIANTS

    assert parse_tasks("reach-moving-v3") == ["reach-moving-v3"] and "reach-moving-v3" not in parse_tasks("all")
    assert episode_seed("reach-moving-v3", 0) not in {episode_seed(t, 0) for t in parse_tasks("all")}
    env = make_env("reach-moving-v3", image_size=64)
    obs, _ = env.reset(seed=3)
    assert obs["instruction"] == VARIANTS["reach-moving-v3"].instruction
    space = env._mw.goal_space
    goals = [np.array(env._mw._target_pos)]
    for _ in range(200):
        env.step(np.zeros(4))
        goals.append(np.array(env._mw._target_pos))
        assert np.all(goals[-1] >= space.low - 1e-9) and np.all(goals[-1] <= space.high + 1e-9)
    steps = np.linalg.norm(np.diff(goals, axis=0), axis=1)
    speed = VARIANTS["reach-moving-v3"].speed * 0.0125
    assert np.median(steps) == pytest.approx(speed, rel=1e-6)  # constant speed between bounces
    assert np.array_equal(env._mw.model.site("goal").pos, goals[-1])  # the rendered marker follows
    assert not np.array_equal(env.expert_action(lead=True), env.expert_action(lead=False))
    env.reset(seed=4)
    other = np.array(env._mw._target_pos)
    env.step(np.zeros(4))
    assert not np.allclose(np.array(env._mw._target_pos) - other, goals[1] - goals[0])  # another velocity
    env.close()


def test_the_hidden_goal_variant_hides_its_marker_and_the_current_frame_expert_holds():
    """reach-moving-hidden-v3: the moving marker is not drawn on its hidden steps (the table shows
    through, in RGB and depth) and drawn again after them; while it is hidden, the expert given the
    current frame only holds still, the expert with history keeps leading the goal."""
    from stvla.envs.variants import VARIANTS

    variant = VARIANTS["reach-moving-hidden-v3"]
    start, end = variant.hidden
    env = make_env("reach-moving-hidden-v3", image_size=128)
    obs, _ = env.reset(seed=3)
    for step in range(end + 2):
        (u, v), marker_depth = pixel_and_depth(np.asarray(env._mw._target_pos), obs)
        red, green, blue = obs["rgb"][v, u].astype(int)
        # the sphere's near surface, up to its radius in front of its centre; the table lies 0.2 m behind
        on_marker = abs(obs["depth"][v, u] - marker_depth) < variant.marker_radius + 0.01
        shown = red > 150 and green < 80 and blue < 80 and on_marker
        assert shown == (not start <= step < end), step
        if start <= step < end:
            assert np.all(env.expert_action(lead=False)[:3] == 0)
            assert np.abs(env.expert_action(lead=True)[:3]).max() > 0
        obs, *_ = env.step(np.zeros(4))  # the arm stays back: it never stands between camera and marker
    env.close()


def pixel_and_depth(point: np.ndarray, obs: dict) -> tuple[np.ndarray, float]:
    """Where a world point is seen in the observation's image (nearest pixel), and its depth from the camera."""
    uv = np.round(geometry.project_world_points(point, obs["camera.intrinsics"], obs["camera.pose"])).astype(int)
    return uv, float((np.linalg.inv(obs["camera.pose"]) @ np.append(point, 1.0))[2])

def test_the_moving_button_variant_slides_its_box_from_the_seed_and_the_target_follows():
    """button-press-topdown-moving-v3: the button box (and the button in it) slides at the variant's speed
    in a direction drawn from the seed, bouncing inside its rectangle; Meta-World's target moves with it,
    and the state the expert reads shows the button where it is drawn."""
    from stvla.envs import episode_seed, parse_tasks
    from stvla.envs.variants import VARIANTS

    task = "button-press-topdown-moving-v3"
    variant = VARIANTS[task]
    assert parse_tasks(task) == [task] and task not in parse_tasks("all") and f"stvla/{task}" in gym.registry
    assert has_subgoal(task) and episode_seed(task, 0) not in {episode_seed(t, 0) for t in ("reach-moving-v3",
                                                                                          "reach-moving-hidden-v3")}
    env = make_env(task, image_size=64)
    obs, _ = env.reset(seed=3)
    assert obs["instruction"] == variant.instruction
    box = env._mw.model.body("box")
    positions, targets, buttons = [box.pos.copy()], [np.array(env._mw._target_pos)], [env._state[4:7].copy()]
    for _ in range(70):
        env.step(np.zeros(4))
        positions.append(box.pos.copy())
        targets.append(np.array(env._mw._target_pos))
        buttons.append(env._state[4:7].copy())
        assert np.all(positions[-1][:2] >= np.array(variant.low) - 1e-9)
        assert np.all(positions[-1][:2] <= np.array(variant.high) + 1e-9)
    positions, targets, buttons = map(np.array, (positions, targets, buttons))
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert np.median(steps) == pytest.approx(variant.speed * 0.0125, rel=1e-6)  # constant speed between bounces
    assert positions[:, 1].min() == variant.low[1] and positions[:, 1].max() == variant.high[1]  # it bounced
    assert np.all(positions[:, 2] == positions[0, 2])  # it slides on the table
    np.testing.assert_allclose(targets - targets[0], positions - positions[0], atol=1e-9)  # the target rides along
    np.testing.assert_allclose(buttons[1:, :2] - buttons[1, :2], positions[1:, :2] - positions[1, :2], atol=1e-6)
    first, _ = env.reset(seed=3)  # the same seed: the same start and the same slide
    env.step(np.zeros(4))
    np.testing.assert_allclose(box.pos, positions[1])
    env.reset(seed=4)
    start = box.pos.copy()
    env.step(np.zeros(4))
    assert not np.allclose(box.pos - start, positions[1] - positions[0])  # another seed, another velocity
    env.close()


def test_the_moving_button_is_not_drawn_while_hidden_and_only_the_expert_with_history_presses_it():
    """While hidden, the box is in neither RGB nor depth (the table shows through where the button was)
    and the expert given the current frame only holds still; the expert with history keeps leading the
    button, and on this held-out start presses it in time, the current-frame expert not."""
    from stvla.envs import episode_seed
    from stvla.envs.variants import VARIANTS

    task = "button-press-topdown-moving-v3"
    variant = VARIANTS[task]
    start, end = variant.hidden
    env = make_env(task, image_size=128)
    obs, _ = env.reset(seed=3)
    for step in range(end + 2):
        (u, v), button_depth = pixel_and_depth(env._state[4:7], obs)  # the top of the button
        shown = abs(obs["depth"][v, u] - button_depth) < 0.03  # the table lies 0.2 m below the button's top
        assert shown == (not start <= step < end), step
        if start <= step < end:
            assert np.all(env.expert_action(lead=False)[:3] == 0)
            assert np.abs(env.expert_action(lead=True)[:3]).max() > 0
        obs, *_ = env.step(np.zeros(4))  # the arm stays back: it never stands between camera and box
    env.close()

    env = make_env(task, image_size=64, max_episode_steps=variant.max_steps)
    successes = {}
    for lead in (True, False):
        env.reset(seed=episode_seed(task, 0, "eval"))
        successes[lead] = False
        for _ in range(variant.max_steps):
            *_, info = env.step(env.expert_action(lead=lead))
            if info["success"]:
                successes[lead] = True
                break
    env.close()
    assert successes == {True: True, False: False}


def test_an_episode_records_how_far_from_the_moving_goal_it_ended():
    """run_episode's final_goal_error_cm: small when the expert (with history) reaches the moving goal,
    large when the hand holds still; None on a plain task; averaged by summarize."""
    from stvla.evaluate.rollout import run_episode

    class Scripted:  # the environment's own expert, or a hand that never moves, as a policy
        predicted_trace = None

        def __init__(self, env, still: bool):
            self.env, self.still = env, still

        def reset(self) -> None:
            pass

        def select_action(self, obs) -> np.ndarray:
            return np.zeros(4, np.float32) if self.still else self.env.expert_action(lead=True)

    env = make_env("reach-moving-v3", image_size=64)
    try:
        reached = run_episode(Scripted(env, still=False), env, "reach-moving-v3", 0, 80, None)
        held = run_episode(Scripted(env, still=True), env, "reach-moving-v3", 0, 20, None)
    finally:
        env.close()
    assert reached["success"] and reached["final_goal_error_cm"] < 5.0
    assert not held["success"] and held["final_goal_error_cm"] > 5.0
    assert summarize([reached, held], ["reach-moving-v3"])["overall"]["final_goal_error_cm"] == pytest.approx(
        (reached["final_goal_error_cm"] + held["final_goal_error_cm"]) / 2)
    plain = make_env("reach-v3", image_size=64)
    try:
        assert run_episode(Scripted(plain, still=True), plain, "reach-v3", 0, 3, None)["final_goal_error_cm"] is None
    finally:
        plain.close()
