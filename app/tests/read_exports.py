"""Reads the app's exports with the tools people use (pycolmap, trimesh, plyfile) and prints what
they see as JSON, for app/tests/exports.rs to compare with what the app holds.

usage: read_exports.py COLMAP_BIN_DIR COLMAP_TEXT_DIR SCENE.glb POINTS.ply
"""

import json
import sys

import numpy as np
import plyfile
import pycolmap
import trimesh


def colmap(folder):
    rec = pycolmap.Reconstruction(f"{folder}/sparse/0")
    cameras = {}
    for cam_id, cam in rec.cameras.items():
        cameras[cam_id] = {"model": cam.model.name, "width": cam.width, "height": cam.height, "params": [float(v) for v in cam.params]}
    images = []
    max_error = 0.0
    observations = 0
    for image_id, image in sorted(rec.images.items()):
        pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        quat_xyzw = np.asarray(pose.rotation.quat)
        rotation = pose.rotation.matrix()
        camera = rec.cameras[image.camera_id]
        for p2d in image.points2D:
            if not p2d.has_point3D():
                continue
            xyz = rec.points3D[p2d.point3D_id].xyz
            projected = camera.img_from_cam(rotation @ xyz + pose.translation)
            max_error = max(max_error, float(np.linalg.norm(np.asarray(projected).reshape(-1)[:2] - p2d.xy)))
            observations += 1
        images.append({
            "id": image_id,
            "name": image.name,
            "camera_id": image.camera_id,
            "rotation": rotation.tolist(),
            "translation": [float(v) for v in pose.translation],
            "quat_xyzw": quat_xyzw.tolist(),
        })
    tracks = [p.track.length() for p in rec.points3D.values()]
    return {
        "cameras": cameras,
        "images": images,
        "points": len(rec.points3D),
        "min_track": min(tracks) if tracks else 0,
        "mean_track": float(np.mean(tracks)) if tracks else 0.0,
        "observations": observations,
        "max_reprojection_error": max_error,
    }


def glb(path):
    scene = trimesh.load(path, force="scene")
    points = 0
    frustums = 0
    picks = 0
    for name, geometry in scene.geometry.items():
        if isinstance(geometry, trimesh.PointCloud):
            points += len(geometry.vertices)
        elif isinstance(geometry, trimesh.path.Path3D):
            frustums += 1
            if "(pick)" in name:
                picks += 1
    return {"points": points, "frustums": frustums, "picks": picks}


def ply(path):
    data = plyfile.PlyData.read(path)
    vertex = data["vertex"]
    return {
        "count": vertex.count,
        "properties": [p.name for p in vertex.properties],
        "min_confidence": float(np.min(vertex["confidence"])) if vertex.count else None,
        "frames": sorted(set(int(f) for f in vertex["frame"])),
    }


if __name__ == "__main__":
    binary, text, scene, points = sys.argv[1:5]
    print(json.dumps({"colmap": colmap(binary), "colmap_text": colmap(text), "glb": glb(scene), "ply": ply(points)}))
